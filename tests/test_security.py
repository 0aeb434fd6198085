"""Secure defaults: MeiliSearch never runs keyless, scripts never print secrets, services stay on loopback."""
from __future__ import annotations

import subprocess
import sys

import pytest

from imgpipe.settings import REPO_ROOT, SettingsError, settings_from_mapping
from stack.services import MeiliSearch, StackError
from tests.helpers import run_script, script_env


def test_meilisearch_is_never_started_without_a_master_key(tmp_path):
    keyless = settings_from_mapping({"MEILI_URL": "http://127.0.0.1:7799", "LOCAL_STATE_DIR": str(tmp_path)})
    with pytest.raises(StackError, match="never runs without a master key"):
        MeiliSearch(keyless).start()
    assert not (tmp_path / "run" / "meilisearch.pid").exists()


def test_a_short_master_key_is_refused_without_echoing_it():
    with pytest.raises(SettingsError) as err:
        settings_from_mapping({"MEILI_MASTER_KEY": "tooshort123"})
    assert "at least 16 bytes" in str(err.value) and "tooshort123" not in str(err.value)


def test_stack_up_refuses_a_short_key_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "stack", "up"], cwd=REPO_ROOT, capture_output=True, text=True,
                            env={**script_env(settings_from_mapping({})), "MEILI_MASTER_KEY": "tooshort123"},
                            timeout=60)
    assert result.returncode == 2
    assert "MEILI_MASTER_KEY must be at least 16 bytes" in result.stderr
    assert "Traceback" not in result.stderr and "tooshort123" not in result.stderr


@pytest.mark.integration
def test_no_secret_reaches_the_logs_even_in_debug_mode(settings):
    secrets = [s for s in (settings.meili_master_key, settings.meili_admin_key, settings.meili_search_key) if s]
    assert secrets
    for script, args in (("producer/image_producer.py", ["-v", "--no-progress"]),
                         ("consumer/image_consumer.py", ["-v", "--no-progress", "--max-idle-seconds", "2"]),
                         ("visualize/search.py", ["anything"])):
        result = run_script(script, args, settings)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-2000:]
        for secret in secrets:
            assert secret not in output, f"{script} printed a key"


def refused(settings, call) -> bool:
    """Did MeiliSearch refuse this call for its key (401/403)?"""
    from imgpipe import meili

    try:
        with meili.errors("trying", settings):
            call()
    except meili.MeiliError as exc:
        return exc.kind == "denied"
    return False


@pytest.mark.integration
def test_the_readers_key_reads_and_does_nothing_else(settings):
    from imgpipe import meili

    client = meili.search_client(settings)
    index = client.index(settings.meili_index)
    assert index.search("")["hits"] == [] and index.get_documents().total == 0  # search, documents.get
    assert refused(settings, client.get_keys)
    assert refused(settings, lambda: index.add_documents([{"id": "x"}]))
    assert refused(settings, lambda: index.delete_documents(["x"]))
    assert refused(settings, lambda: index.update_settings({"sortableAttributes": []}))
    assert refused(settings, lambda: client.create_index(f"{settings.meili_index}_other"))
    assert refused(settings, lambda: client.delete_index(settings.meili_index))
    assert refused(settings, lambda: client.index("image_metadata_elsewhere").search(""))  # not its index


@pytest.mark.integration
def test_the_consumers_key_writes_its_indexes_and_does_nothing_else(settings):
    from imgpipe import meili

    client = meili.client(settings)
    index = client.index(settings.meili_index)
    task = index.add_documents([{"id": "x", "_vectors": {"image": None}}])
    meili.wait_for_task(client, settings, task.task_uid, "adding", settings.meili_index)  # documents.add, tasks.get
    assert refused(settings, lambda: index.search(""))
    assert refused(settings, index.get_documents)
    assert refused(settings, client.get_keys)
    assert refused(settings, lambda: client.create_index(f"{settings.meili_index}_other"))
    assert refused(settings, lambda: client.delete_index(settings.meili_index))
    assert refused(settings, lambda: client.index("image_metadata_elsewhere").add_documents([{"id": "y"}]))


@pytest.mark.integration
def test_the_local_stack_hands_out_least_privilege_keys(stack):
    """`make up` (stack/lifecycle.py) keeps in .env the consumer's and the readers' keys of
    imgpipe/access.py, limited to MEILI_INDEX and the tests' and benchmarks' indexes: never the
    master key, nor MeiliSearch's default admin key, which may do anything to every index."""
    from imgpipe import access, meili
    from stack.lifecycle import LOCAL_INDEX_PATTERNS

    assert stack.indexing_key == stack.meili_admin_key != stack.meili_master_key
    assert stack.reading_key == stack.meili_search_key != stack.meili_master_key
    keys = {k.key: k for k in meili.client(stack, key=stack.meili_master_key).get_keys({"limit": 1000}).results}
    for key, actions in ((stack.meili_admin_key, access.CONSUMER_ACTIONS),
                         (stack.meili_search_key, access.READER_ACTIONS)):
        assert sorted(keys[key].actions) == sorted(actions)
        assert keys[key].indexes == [stack.meili_index, *LOCAL_INDEX_PATTERNS]
        assert keys[key].expires_at is None


def test_the_local_s3_server_is_never_started_without_keys(tmp_path, monkeypatch):
    from stack.services import S3

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "")
    server = S3(settings_from_mapping({"S3_ENDPOINT_URL": "http://127.0.0.1:9799", "LOCAL_STATE_DIR": str(tmp_path)}))
    with pytest.raises(StackError, match="never runs without keys"):
        server.start()
    assert not (tmp_path / "run" / "s3.pid").exists() and not (tmp_path / "bin").exists()  # nothing built


@pytest.mark.integration
def test_the_s3_server_gets_its_keys_through_the_environment_and_refuses_others(stack):
    import os

    from imgpipe import s3
    from stack.services import S3

    pid = S3(stack).pid()
    if pid is None:
        pytest.skip("the S3 server is not one this stack started")
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    assert len(secret) >= 20
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        argv = cmdline.read()
    assert secret.encode() not in argv and os.environ["AWS_ACCESS_KEY_ID"].encode() not in argv
    assert s3.answers(stack)
    wrong = secret[::-1] + "x"
    result = run_script("producer/image_producer.py", ["--no-progress"], stack, AWS_SECRET_ACCESS_KEY=wrong)
    assert result.returncode == 1
    assert "SignatureDoesNotMatch" in result.stderr and "Traceback" not in result.stderr
    assert wrong not in result.stderr and secret not in result.stderr
