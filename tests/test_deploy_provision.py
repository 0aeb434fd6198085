"""deploy/host/provision.py against the real local MeiliSearch: the index, its settings and the
two limited keys the host's set-up creates with the master key, and that the consumer's own code
indexes with its key while that key can do nothing else."""
from __future__ import annotations

import os
import stat
import threading

import meilisearch
import pytest
from meilisearch.errors import MeilisearchApiError

from consumer.indexer import Indexer
from deploy.host import provision
from imgpipe.document import INDEX_SETTINGS

pytestmark = pytest.mark.integration


@pytest.fixture
def provisioned(stack, unique, tmp_path):
    index = f"test_deploy_{unique}"
    consumer_key, reader_key = provision.provision_meili(stack.with_overrides(meili_index=index))
    master = meilisearch.Client(stack.meili_url, stack.meili_master_key)
    yield {"index": index, "consumer": consumer_key, "reader": reader_key, "master": master}
    for key in master.get_keys({"limit": 1000}).results:
        if key.name and key.name.endswith(f"of {index}"):
            master.delete_key(key.uid)
    try:
        master.delete_index(index)
    except MeilisearchApiError:
        pass


def refused(call) -> bool:
    try:
        call()
    except MeilisearchApiError as exc:
        return exc.status_code in (401, 403)
    return False


def test_the_index_exists_with_its_settings_and_the_keys_are_made_once(stack, provisioned):
    master = provisioned["master"]
    index = master.get_index(provisioned["index"])
    assert index.primary_key == "id"
    settings = index.get_settings()
    assert sorted(settings["filterableAttributes"]) == sorted(INDEX_SETTINGS["filterableAttributes"])
    assert sorted(settings["sortableAttributes"]) == sorted(INDEX_SETTINGS["sortableAttributes"])
    assert "image" in settings.get("embedders", {})  # the descriptor's embedder, before any consumer starts
    keys = {k.name: k for k in master.get_keys({"limit": 1000}).results}
    consumer = keys[f"imgpipe consumer of {provisioned['index']}"]
    assert sorted(consumer.actions) == sorted(provision.CONSUMER_ACTIONS)
    assert consumer.indexes == [provisioned["index"]] and consumer.expires_at is None
    assert sorted(keys[f"imgpipe reader of {provisioned['index']}"].actions) == sorted(provision.READER_ACTIONS)
    # A second set-up finds the same keys: nothing to hand out again.
    assert provision.provision_meili(stack.with_overrides(meili_index=provisioned["index"])) == (
        provisioned["consumer"], provisioned["reader"])


def test_the_consumers_indexer_works_with_its_key_and_the_key_does_nothing_else(stack, provisioned):
    index = provisioned["index"]
    settings = stack.with_overrides(meili_index=index, meili_admin_key=provisioned["consumer"], meili_master_key="")
    indexer = Indexer(settings, threading.Event())
    indexer.ensure_index()  # what consumer/loop.py does at start
    no_descriptor = {"_vectors": {"image": None}}  # as to_document writes it without one
    indexer.add([{"id": "a" * 64, "file_name": "cat.jpg", "format": "jpeg", **no_descriptor},
                 {"id": "b" * 64, "file_name": "dog.png", "format": "png", **no_descriptor}])
    assert provisioned["master"].index(index).get_stats().number_of_documents == 2

    key = meilisearch.Client(stack.meili_url, provisioned["consumer"])
    assert refused(lambda: key.index(index).search("cat"))
    assert refused(lambda: key.create_index(f"{index}_other"))
    assert refused(lambda: key.delete_index(index))
    assert refused(lambda: key.get_keys())
    assert refused(lambda: key.index(f"{index}_other").add_documents([{"id": "c"}]))


def test_the_readers_key_searches_and_reads_documents_but_cannot_write(stack, provisioned):
    index = provisioned["index"]
    master = provisioned["master"]
    master.wait_for_task(master.index(index).add_documents([{"id": "a" * 64, "file_name": "cat.jpg", "_vectors": {"image": None}}]).task_uid)
    reader = meilisearch.Client(stack.meili_url, provisioned["reader"])
    assert [hit["file_name"] for hit in reader.index(index).search("cat")["hits"]] == ["cat.jpg"]
    assert reader.index(index).get_documents({"limit": 10}).total == 1
    assert refused(lambda: reader.index(index).add_documents([{"id": "b" * 64}]))
    assert refused(lambda: reader.index(index).update_settings({"sortableAttributes": []}))


def test_env_files_are_written_only_for_their_readers(tmp_path):
    consumer_env, reader_env = tmp_path / "consumer.env", tmp_path / "reader.env"
    provision.write_env(consumer_env, {"MEILI_ADMIN_KEY": "k1"}, mode=0o600)
    provision.write_env(reader_env, {"MEILI_SEARCH_KEY": "k2"}, mode=0o640, group=None)
    assert stat.S_IMODE(os.stat(consumer_env).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(reader_env).st_mode) == 0o640
    assert consumer_env.read_text() == "MEILI_ADMIN_KEY=k1\n" and reader_env.read_text() == "MEILI_SEARCH_KEY=k2\n"
    provision.write_env(consumer_env, {"MEILI_ADMIN_KEY": "k3"}, mode=0o600)  # rewritten in place
    assert consumer_env.read_text() == "MEILI_ADMIN_KEY=k3\n" and not list(tmp_path.glob("*.tmp"))


def test_provision_without_a_master_key_is_a_settings_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("MEILI_MASTER_KEY", "")
    code = provision.main(["meili", "--consumer-env", str(tmp_path / "c.env"), "--reader-env", str(tmp_path / "r.env")])
    assert code == 2 and "MEILI_MASTER_KEY is not set" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_the_meilisearch_units_command_line_starts_the_real_server(stack, tmp_path):
    """The unit's ExecStart, with this machine's binary, a free port and a scratch data dir: the
    flags are ones MeiliSearch 1.21 accepts, and it refuses requests without the key."""
    import re
    import socket
    import subprocess
    import time
    import urllib.error
    import urllib.request

    from imgpipe.settings import REPO_ROOT
    from stack.services import MeiliSearch

    unit = (REPO_ROOT / "deploy/systemd/imgpipe-meilisearch.service").read_text()
    command = re.sub(r"\\\n\s*", " ", re.search(r"^ExecStart=(.*?[^\\])$", unit, re.M | re.S).group(1)).split()
    assert command[0] == "/opt/imgpipe/bin/meilisearch"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [str(MeiliSearch(stack).binary)] + [
        arg.replace("/var/lib/meilisearch", str(tmp_path)).replace("127.0.0.1:7700", f"127.0.0.1:{port}")
        for arg in command[1:]]
    server = subprocess.Popen(command, env={"MEILI_MASTER_KEY": "a-master-key-of-32-bytes-or-more!"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                    assert resp.status == 200
                    break
            except (urllib.error.URLError, OSError):
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "MeiliSearch did not answer"
                time.sleep(0.2)
        with pytest.raises(urllib.error.HTTPError) as refused_request:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/indexes", timeout=5)
        assert refused_request.value.code == 401
        assert (tmp_path / "data.ms").is_dir()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_consumer_whose_index_was_never_set_up_says_so_in_one_line(stack, provisioned):
    """The consumer's key may not create indexes: without the set-up, the consumer stops at
    start with what to do (exit 2 in the script), instead of retrying forever."""
    from imgpipe.errors import UserError

    provisioned["master"].wait_for_task(provisioned["master"].delete_index(provisioned["index"]).task_uid)
    settings = stack.with_overrides(meili_index=provisioned["index"], meili_admin_key=provisioned["consumer"],
                                    meili_master_key="")
    with pytest.raises(UserError, match="does not exist and the consumer's key may not create it: run the set-up"):
        Indexer(settings, threading.Event()).ensure_index()


def test_the_hosts_readers_key_alone_runs_search_and_the_csv_export(stack, provisioned, tmp_path, monkeypatch,
                                                                    capsys):
    """What `imgpipe-run` gives the login user on the host: the readers' key, no other."""
    from mapreduce import export_csv
    from visualize import search

    master = provisioned["master"]
    done = master.wait_for_task(master.index(provisioned["index"]).add_documents(
        [{"id": "a" * 64, "file_name": "cat.jpg", "key": "raw/cat.jpg", "_vectors": {"image": None}}]).task_uid)
    assert done.status == "succeeded", done.error
    for name, value in (("MEILI_MASTER_KEY", ""), ("MEILI_ADMIN_KEY", ""), ("MEILI_SEARCH_KEY", provisioned["reader"]),
                        ("MEILI_INDEX", provisioned["index"]), ("MEILI_URL", stack.meili_url)):
        monkeypatch.setenv(name, value)
    assert export_csv.main(["--out", str(tmp_path / "m.csv")]) == 0, capsys.readouterr().err
    assert "exported 1 documents" in capsys.readouterr().out
    assert search.main(["cat"]) == 0
    assert "cat.jpg" in capsys.readouterr().out
