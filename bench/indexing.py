"""`indexing_batched`: the consumer's Indexer (one request per batch, wait for the task) against
one request per document with a wait for each task, as naive code does.

Both write the same documents (fixtures.documents, every field of the real document) into
a fresh index with the pipeline's index settings, and both poll task status every 20 ms (the
Indexer's interval), so the ratio is what batching is worth and nothing else.
"""
from __future__ import annotations

import threading
import time

from imgpipe import access, meili
from imgpipe.settings import Settings

from bench.figures import Figure

POLL_MS = 20


def _fresh_index(settings: Settings, name: str):
    """A new index with INDEX_SETTINGS, made with the master key (as set-up does), and a client
    with the consumer's key to fill it."""
    access.prepare_index(settings, settings.meili_master_key, name, embedder=False)
    client = meili.client(settings)
    return client, client.index(name)


def batched_seconds(settings: Settings, index_name: str, documents: list[dict]) -> float:
    from consumer.indexer import Indexer

    access.prepare_index(settings, settings.meili_master_key, index_name)
    indexer = Indexer(settings.with_overrides(meili_index=index_name), threading.Event())
    indexer.ensure_index()
    size = settings.consumer_batch_size
    started = time.perf_counter()
    for start in range(0, len(documents), size):
        indexer.add(documents[start:start + size])
    return time.perf_counter() - started


def naive_seconds(settings: Settings, index_name: str, documents: list[dict]) -> float:
    client, index = _fresh_index(settings, index_name)
    started = time.perf_counter()
    for document in documents:
        task = index.add_documents([document], primary_key="id")
        done = client.wait_for_task(task.task_uid, interval_in_ms=POLL_MS)
        if done.status != "succeeded":
            raise RuntimeError(f"naive indexing: task {task.task_uid} {done.status}: {done.error}")
    return time.perf_counter() - started


def index_names(prefix: str, rounds: int) -> list[str]:
    """The indexes indexing_figure creates: a fresh pair per round, so no round updates another's."""
    return [f"{prefix}_{kind}{r}" for r in range(max(1, rounds)) for kind in ("batched", "naive")]


def indexing_figure(settings: Settings, count: int, naive_count: int, index_prefix: str,
                    rounds: int = 2) -> Figure:
    """Batched against one-per-request, alternating, best of `rounds` each. The naive floor runs
    on the first `naive_count` of the same documents (at ~20-30 documents/s, all of them would
    take minutes); MeiliSearch is shared with whoever else uses the machine, hence best-of."""
    from fixtures.documents import sample_documents

    documents = sample_documents(count, seed=11)
    names = index_names(index_prefix, rounds)
    batched = naive = float("inf")
    for batched_index, naive_index in zip(names[0::2], names[1::2]):
        batched = min(batched, batched_seconds(settings, batched_index, documents))
        held = meili.document_count(settings, batched_index)
        if held != count:
            raise RuntimeError(f"batched indexing: {batched_index} holds {held} of {count} documents")
        naive = min(naive, naive_seconds(settings, naive_index, documents[:naive_count]))
    return Figure("indexing_batched", count / batched, "docs/s", floor=naive_count / naive,
                  floor_name="1 doc/request",
                  detail={"documents": count, "batch_size": settings.consumer_batch_size,
                          "floor_documents": naive_count, "rounds": rounds, "seconds": round(batched, 3),
                          "floor_seconds": round(naive, 3), "task_poll_ms": POLL_MS})
