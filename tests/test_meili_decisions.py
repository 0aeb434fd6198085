"""MeiliSearch's answers, decided: a batch refused because of some documents is split until they
are found (only they are dead-lettered); a misconfiguration stops the consumer at start-up with
exit 2 and one line, instead of retrying forever. Against the real MeiliSearch."""
from __future__ import annotations

import threading

import pytest

from consumer.indexer import Indexer
from fixtures.documents import sample_documents
from imgpipe import meili
from tests.helpers import admin, all_documents, run_script

pytestmark = pytest.mark.integration


def test_a_batch_refused_for_some_documents_is_split_and_only_they_are_refused(settings):
    indexer = Indexer(settings, threading.Event())
    indexer.ensure_index()
    docs = sample_documents(40, seed=3, awkward=False)
    docs[7] = {**docs[7], "id": "not a valid id!"}
    docs[31] = {**docs[31], "_vectors": "not an object"}
    refused = indexer.add(docs)
    assert sorted(refused) == [7, 31]
    assert "invalid_document_id" in refused[7] and "expected a map" in refused[31]
    indexed = {d["id"] for d in all_documents(settings)}
    assert indexed == {d["id"] for i, d in enumerate(docs) if i not in (7, 31)}


def start_up(settings, **env):
    return run_script("consumer/image_consumer.py", ["--max-idle-seconds", "2", "--no-progress"], settings,
                      timeout=120, **env)


def test_an_index_keyed_by_another_field_stops_the_consumer_with_exit_2(settings):
    client = meili.client(admin(settings))  # made by someone else than the set-up, keyed otherwise
    meili.delete_index(admin(settings), settings.meili_index)
    meili.wait_for_task(client, settings, client.create_index(settings.meili_index, {"primaryKey": "key"}).task_uid,
                        "creating")
    result = start_up(settings)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines == [f"error: MeiliSearch index {settings.meili_index!r} (MEILI_INDEX) has primary key 'key', but "
                     "the pipeline's documents are keyed by 'id': choose another MEILI_INDEX or delete that index"]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("env, says", [
    # With a key allowed on every index (the master key), so that MeiliSearch judges the name itself;
    # the stack's consumer key is refused any index outside its own first (the case below).
    ({"MEILI_INDEX": "not a valid name!", "MEILI_ADMIN_KEY": "MASTER"},
     "refused index 'not a valid name!' (MEILI_INDEX): invalid_index_uid"),
    ({"MEILI_ADMIN_KEY": "x" * 40}, "refused the indexing key (MEILI_ADMIN_KEY, else MEILI_MASTER_KEY)"),
])
def test_a_misconfiguration_found_at_start_up_is_one_line_and_exit_2(settings, env, says):
    env = {name: settings.meili_master_key if value == "MASTER" else value for name, value in env.items()}
    result = start_up(settings, **env)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and says in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and env.get("MEILI_ADMIN_KEY", "@@") not in result.stderr
