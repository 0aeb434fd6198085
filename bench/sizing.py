"""`sizing`: what one core of a consumer host processes, and how many documents per second
MeiliSearch indexes when it does nothing else, turned into the fleet size where MeiliSearch (on
the main host), not processing, becomes the limit.

- images per core: the consumer with its default configuration (CONSUMER_WORKERS=0, one worker
  process per core) drains the corpus's photo-like JPEGs from the real stack; its CPU per image
  (the consumer process while busy plus its workers, the two things a fleet host runs) gives
  images/s per fully busy core. The wall-clock rate per core on this shared machine is kept in
  the detail. Its floor is the consumer's processing of the same photos from memory on one
  thread (consumer.processing.process_image, no Kafka, S3 or MeiliSearch), also per CPU second:
  the ratio is what the pipeline around processing costs. CPU seconds, not wall seconds, because
  this machine's cores are shared: a busy neighbour stretches wall time, not CPU time.
- MeiliSearch's ceiling: the consumer's Indexer (batches of CONSUMER_BATCH_SIZE, wait for each
  task) from WRITERS threads at once, as several hosts send batches, into one fresh index; the
  wall rate measured here, and the documents per CPU second MeiliSearch spent on them.
- the table: images per day per host type, and hosts at which the fleet would index faster than
  MeiliSearch can take (each image is one document).
"""
from __future__ import annotations

import os
import threading
import time

from imgpipe import access, meili
from imgpipe.settings import Settings

from bench.figures import Figure

# Concurrent writers of the ceiling run: several consumer hosts each send their own batches.
WRITERS = 4
# vCPUs of the fleet's instance types (deploy/imgpipe.yaml, Mappings FleetVcpus) and their on-demand
# price in us-east-1 (USD per hour, Linux, as listed by AWS in 2025; the README states the date).
HOST_TYPES = {"c7i.large": (2, 0.0893), "c7i.xlarge": (4, 0.1785), "c7i.2xlarge": (8, 0.357),
              "m7i.large": (2, 0.1008)}
SECONDS_PER_DAY = 86_400


def images_per_core(summary: dict, images: int) -> tuple[float | None, dict]:
    """Images/s of one fully busy core from a throughput run's summary: 1000 / (consumer and
    worker CPU ms per image). None when the summary lacks the CPU figures."""
    busy = summary.get("active_cpu_seconds")
    workers = summary.get("worker_cpu_seconds")
    if busy is None or workers is None or not images:
        return None, {}
    cpu_ms = 1000 * (busy + workers) / images
    return 1000 / cpu_ms, {"consumer_cpu_ms_per_image": round(1000 * busy / images, 2),
                           "worker_cpu_ms_per_image": round(1000 * workers / images, 2)}


def cpu_floor(photos: list[tuple[str, bytes]], passes: int) -> float:
    """Images per CPU second of process_image on one thread (the best of `passes`)."""
    import cv2

    from consumer.processing import ProcessingOptions, process_image
    from imgpipe.errors import MessageError

    cv2.setNumThreads(1)
    options = ProcessingOptions()
    best = float("inf")
    for _ in range(max(1, passes)):
        started = time.thread_time()
        for _, data in photos:
            try:
                process_image(data, options)
            except MessageError:
                pass
        best = min(best, time.thread_time() - started)
    return len(photos) / best


def indexing_ceiling(settings: Settings, index_name: str, documents: list[dict],
                     writers: int = WRITERS) -> tuple[float, float | None]:
    """(documents/s, documents per MeiliSearch CPU second) into one fresh index from `writers`
    Indexers at once, each its share of the documents in batches of CONSUMER_BATCH_SIZE, waiting
    for each task as the consumer does. The CPU figure is None when MeiliSearch is not ours."""
    from bench.pipeline import CpuMeter
    from consumer.indexer import Indexer

    access.prepare_index(settings, settings.meili_master_key, index_name)
    target = settings.with_overrides(meili_index=index_name)
    Indexer(target, threading.Event()).ensure_index()
    size = settings.consumer_batch_size
    shares = [documents[i::writers] for i in range(writers)]
    errors: list[BaseException] = []

    def write(share: list[dict]) -> None:
        try:
            indexer = Indexer(target, threading.Event())
            for start in range(0, len(share), size):
                indexer.add(share[start:start + size])
        except BaseException as exc:  # reported below, after every writer stopped
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(share,)) for share in shares]
    meter = CpuMeter(settings)
    before = meter.snapshot()
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    meili_cpu = meter.snapshot().get("meilisearch", float("nan")) - before.get("meilisearch", float("nan"))
    if errors:
        raise RuntimeError(f"indexing ceiling: {errors[0]}")
    held = meili.document_count(settings, index_name)
    if held != len(documents):
        raise RuntimeError(f"indexing ceiling: {index_name} holds {held} of {len(documents)} documents")
    per_cpu_second = len(documents) / meili_cpu if meili_cpu and meili_cpu == meili_cpu else None
    return len(documents) / seconds, per_cpu_second


def sizing_table(per_core: float, ceiling: float, host_types: dict = HOST_TYPES) -> dict[str, dict]:
    """Per host type: images/s and per day with every core busy, and the hosts at which the fleet
    would outrun MeiliSearch's ceiling (rounded down: with that many the index still keeps up)."""
    table = {}
    for name, (vcpus, price) in host_types.items():
        per_host = per_core * vcpus
        table[name] = {"vcpus": vcpus, "images_per_second": round(per_host, 1),
                       "images_per_day": int(per_host * SECONDS_PER_DAY),
                       "hosts_before_meilisearch_limits": int(ceiling // per_host) if per_host else None,
                       "usd_per_hour": price,
                       "usd_per_million_images": round(price / (per_host * 3600) * 1e6, 2) if per_host else None}
    return table


def sizing_figures(summary: dict, images: int, ceiling: tuple[float, float | None], processing_floor: float | None,
                   writers: int = WRITERS) -> list[Figure]:
    """`processing_floor`: images per CPU second of process_image on the same photos, one thread;
    `ceiling`: indexing_ceiling's (documents/s, documents per MeiliSearch CPU second)."""
    ceiling, per_meili_cpu_second = ceiling
    per_core, cpu = images_per_core(summary, images)
    cores = os.cpu_count() or 1
    wall = summary.get("active_images_per_second")
    figures = [
        Figure("sizing_images_per_core", per_core, "images/s", floor=processing_floor,
               floor_name="same photos, memory, 1 thread",
               detail={"images": images, "workers": "CONSUMER_WORKERS=0 (one per core)", "cores": cores,
                       "configuration": "default", **cpu,
                       "wall_images_per_second": wall,
                       "wall_images_per_second_per_core": round(wall / cores, 2) if wall else None,
                       "measure": "1000 / (consumer busy + worker CPU ms per image): one fully busy core"}),
        Figure("meilisearch_indexing_ceiling", ceiling, "docs/s",
               detail={"writers": writers, "batch_size": "CONSUMER_BATCH_SIZE",
                       "documents_per_meilisearch_cpu_second": round(per_meili_cpu_second, 1)
                       if per_meili_cpu_second else None,
                       "measure": "the consumer's Indexer from several threads into one index, nothing else "
                                  "of the pipeline running (wall clock, on this machine's shared cores)"}),
    ]
    if per_core:
        table = sizing_table(per_core, ceiling)
        figures.append(Figure("sizing_fleet_limit_c7i_large", table["c7i.large"]["hosts_before_meilisearch_limits"],
                              "hosts", detail={"table": table}))
    return figures
