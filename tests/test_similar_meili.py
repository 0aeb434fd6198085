"""Descriptors in a real MeiliSearch 1.21: a userProvided embedder, documents' `_vectors`, and
both ways of asking for similar images (the /similar endpoint and a vector query) with the
search-only key. An image's copies must come before every unrelated image."""
from __future__ import annotations

import numpy as np
import pytest

from consumer.descriptor import cosine
from imgpipe import meili
from imgpipe.document import EMBEDDER, EMBEDDER_SETTINGS, INDEX_SETTINGS
from tests.similar_images import collection, descriptor_of

pytestmark = pytest.mark.integration

EMBEDDERS = EMBEDDER_SETTINGS["embedders"]


def wait(client, task) -> None:
    done = client.wait_for_task(task.task_uid, timeout_in_ms=60_000, interval_in_ms=20)
    assert done.status == "succeeded", done.error


@pytest.fixture
def similar_index(settings):
    """An index with the pipeline's settings plus the embedder, holding the collection: ids
    `{group}-{kind}`, each document with its descriptor in `_vectors`."""
    client = meili.client(settings)  # the fixture made the index; the consumer's key sets its settings
    index = client.index(settings.meili_index)
    wait(client, index.update_settings({**INDEX_SETTINGS, "embedders": EMBEDDERS}))
    documents = [{"id": f"{group}-{kind}", "key": f"raw/{group}/{kind}.jpg", "group": group,
                  "_vectors": {EMBEDDER: descriptor_of(data)}}
                 for group, kind, data in collection()]
    wait(client, index.add_documents(documents, primary_key="id"))
    return settings, {doc["id"]: doc for doc in documents}


def assert_copies_first(hits: list[dict], group: str, copies: int) -> None:
    groups = [hit["group"] for hit in hits]
    assert groups[:copies] == [group] * copies, f"{group}: hits in order {groups}"


def test_similar_endpoint_ranks_copies_above_unrelated_images(similar_index):
    settings, documents = similar_index
    index = meili.search_client(settings).index(settings.meili_index)  # the search-only key
    originals = [doc for doc in documents.values() if doc["id"].endswith("-original")]
    for original in originals:
        copies = sum(1 for doc in documents.values() if doc["group"] == original["group"]) - 1
        result = index.get_similar_documents({"id": original["id"], "embedder": EMBEDDER, "limit": len(documents),
                                              "showRankingScore": True})
        hits = result["hits"]
        assert original["id"] not in [hit["id"] for hit in hits]  # the reference itself is left out
        assert len(hits) == len(documents) - 1
        assert_copies_first(hits, original["group"], copies)
        # The ranking score is the cosine mapped from [-1, 1] to [0, 1].
        best = documents[hits[0]["id"]]
        expected = (1 + cosine(original["_vectors"][EMBEDDER], best["_vectors"][EMBEDDER])) / 2
        assert hits[0]["_rankingScore"] == pytest.approx(expected, abs=1e-3)


def test_vector_query_ranks_the_image_then_its_copies(similar_index):
    settings, documents = similar_index
    index = meili.search_client(settings).index(settings.meili_index)
    original = documents["coffee-original"]
    result = index.search("", {"vector": original["_vectors"][EMBEDDER], "limit": 8,
                               "hybrid": {"semanticRatio": 1.0, "embedder": EMBEDDER}})
    assert result["hits"][0]["id"] == "coffee-original"
    assert_copies_first(result["hits"][1:], "coffee", 6)
    assert "_vectors" not in result["hits"][0]  # not sent back unless asked for


def test_retrieved_vectors_are_the_descriptor_in_float32(similar_index):
    settings, documents = similar_index
    index = meili.search_client(settings).index(settings.meili_index)
    result = index.get_similar_documents({"id": "camera-original", "embedder": EMBEDDER, "limit": 1,
                                          "retrieveVectors": True})
    hit = result["hits"][0]
    stored = hit["_vectors"][EMBEDDER]
    assert stored["regenerate"] is False
    assert len(stored["embeddings"]) == 1
    np.testing.assert_allclose(stored["embeddings"][0], documents[hit["id"]]["_vectors"][EMBEDDER], atol=1e-6)


def test_a_document_without_vectors_fails_the_whole_batch(settings):
    # Why every document must carry `_vectors` once the embedder is set: one without fails the
    # batch's task, and the consumer retries a failed batch like an outage.
    client = meili.client(settings)
    index = client.index(settings.meili_index)
    wait(client, index.update_settings({"embedders": EMBEDDERS}))
    vector = descriptor_of(collection()[0][2])
    task = index.add_documents([{"id": "with", "_vectors": {EMBEDDER: vector}}, {"id": "without"}])
    done = client.wait_for_task(task.task_uid, timeout_in_ms=60_000, interval_in_ms=20)
    assert done.status == "failed" and done.error["code"] == "vector_embedding_error"
    task = index.add_documents([{"id": "with", "_vectors": {EMBEDDER: vector}},
                                {"id": "opted-out", "_vectors": {EMBEDDER: None}}])
    wait(client, task)
    assert meili.document_count(settings, settings.meili_index) == 2
    search = meili.search_client(settings).index(settings.meili_index)
    assert search.get_similar_documents({"id": "opted-out", "embedder": EMBEDDER})["hits"] == []
