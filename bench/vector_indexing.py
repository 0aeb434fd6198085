"""What descriptors cost MeiliSearch: indexing rate and disk with and without `_vectors`.

The same 2000 documents (mapreduce.sample_data, every field of the real document) go into two
fresh indexes through the consumer's Indexer (one add_documents per CONSUMER_BATCH_SIZE
documents, wait for the task): one with the pipeline's INDEX_SETTINGS, one with a userProvided
embedder of consumer.descriptor.DESCRIPTOR_DIMENSIONS added and each document carrying its
descriptor (computed from a photo-like 320x240 image per document) in `_vectors`. Best of
--rounds, alternating. Disk is MeiliSearch's own /stats usedDatabaseSize before and after each
index (nothing else may write to that server meanwhile). The indexes are deleted at the end.

Runs on the local stack (started if it is down, left running); settings from the environment
and .env like every script (MEILI_*, CONSUMER_BATCH_SIZE).
Exit status: 0 measured, 1 MeiliSearch failed, 2 usage or settings error.
"""
from __future__ import annotations

from consumer import imageguard  # noqa: F401  isort: skip  (sets OpenCV's pixel limit before cv2 loads)

import sys
import threading
import time
import uuid

from imgpipe import cli

EMBEDDER = "image"


def descriptors(count: int) -> list[list[float]]:
    from bench.descriptor import consumer_inputs
    from consumer.descriptor import describe
    from imgpipe.samples import photo_like_jpeg

    return [describe(*consumer_inputs(photo_like_jpeg(10_000 + i, 320, 240, 85))) for i in range(count)]


def _used_bytes(client) -> int:
    return int(client.http.get("stats")["usedDatabaseSize"])


def index_once(settings, name: str, documents: list[dict], embedders: dict | None) -> tuple[float, int]:
    """(seconds to index, bytes of database the index added)."""
    from consumer.indexer import Indexer

    indexer = Indexer(settings.with_overrides(meili_index=name), threading.Event())
    before = _used_bytes(indexer.client)
    indexer.ensure_index()
    if embedders:
        indexer._wait(indexer.index.update_settings({"embedders": embedders}).task_uid, "embedders")
    size = settings.consumer_batch_size
    started = time.perf_counter()
    for start in range(0, len(documents), size):
        indexer.add(documents[start:start + size])
    seconds = time.perf_counter() - started
    stats = indexer.index.get_stats()
    if stats.number_of_documents != len(documents):
        raise RuntimeError(f"{name} holds {stats.number_of_documents} of {len(documents)} documents")
    return seconds, _used_bytes(indexer.client) - before


def main(argv=None) -> int:
    p = cli.parser("python -m bench.vector_indexing", __doc__, [
        "python -m bench.vector_indexing",
        "CONSUMER_BATCH_SIZE=500 python -m bench.vector_indexing --documents 5000 --rounds 3"])
    p.add_argument("--documents", type=int, default=2000, help="documents per index")
    p.add_argument("--rounds", type=int, default=2, help="best of this many rounds, alternating")
    args = p.parse_args(argv)
    if args.documents < 1 or args.rounds < 1:
        print("error: --documents and --rounds must be at least 1", file=sys.stderr)
        return cli.EXIT_USAGE
    cli.setup_logging()

    def run() -> int:
        from tabulate import tabulate

        from consumer.descriptor import DESCRIPTOR_DIMENSIONS
        from imgpipe.clients import meili_client
        from mapreduce.sample_data import sample_documents
        from stack.__main__ import ensure_running

        settings, _ = ensure_running()
        plain = sample_documents(args.documents, seed=11)
        vectors = descriptors(args.documents)
        with_vectors = [{**doc, "_vectors": {EMBEDDER: vec}} for doc, vec in zip(plain, vectors)]
        embedders = {EMBEDDER: {"source": "userProvided", "dimensions": DESCRIPTOR_DIMENSIONS}}
        prefix = f"bench_vectors_{uuid.uuid4().hex[:8]}"
        best = {"without": (float("inf"), 0), "with": (float("inf"), 0)}
        names = []
        try:
            for r in range(args.rounds):
                for kind, docs, emb in (("without", plain, None), ("with", with_vectors, embedders)):
                    name = f"{prefix}_{kind}{r}"
                    names.append(name)
                    seconds, used = index_once(settings, name, docs, emb)
                    if seconds < best[kind][0]:
                        best[kind] = (seconds, used)
        finally:
            client = meili_client(settings)
            for name in names:
                client.delete_index(name)
        rows = [[kind, f"{args.documents / seconds:.0f}", f"{seconds:.2f}", f"{used / 1e6:.1f}",
                 f"{used / args.documents / 1e3:.1f}"] for kind, (seconds, used) in best.items()]
        print(tabulate(rows, ["_vectors", "docs/s", "seconds", "database MB", "KB/doc"]))
        print(f"\n{args.documents} documents, batches of {settings.consumer_batch_size}, "
              f"{DESCRIPTOR_DIMENSIONS} dimensions, best of {args.rounds}")
        return cli.EXIT_OK

    return cli.run(run)


if __name__ == "__main__":
    sys.exit(main())
