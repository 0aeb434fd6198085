"""The order of the benchmark steps, their sizes, and the clean-up afterwards.

A step that fails leaves its figures empty with the reason in `note`, and the others still
run: one broken measurement should not hide the rest of the table.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from imgpipe import kafka, meili, s3
from imgpipe.errors import InfrastructureError
from imgpipe.settings import Settings

from bench import corpus as bench_corpus
from bench.figures import Figure
from bench.pipeline import BenchError, RunNames

log = logging.getLogger("bench")


@dataclass(frozen=True)
class BenchConfig:
    corpus: bench_corpus.CorpusSpec
    passes: int  # best-of passes of the in-memory floors
    producer_messages: int
    index_documents: int
    naive_documents: int  # the one-request-per-document floor runs on this many of them
    mapreduce_rows: int
    hadoop: bool
    latency_seconds: float  # how long the steady load of the latency run lasts
    max_idle_seconds: float  # the consumer stops after this long without messages
    visualize_documents: tuple[int, int] = (100_000, 1_000_000)  # the two indexes report.py runs on
    keep_visualize_indexes: bool = True  # they take minutes to build: kept for the next run
    sizing_photos: int = 120  # photo-like JPEGs the default-configuration consumer drains (sizing)
    sizing_documents: int = 4000  # documents of MeiliSearch's indexing ceiling (sizing)
    label: str = "full"


FULL = BenchConfig(corpus=bench_corpus.FULL, passes=3, producer_messages=100_000, index_documents=2000,
                   naive_documents=200, mapreduce_rows=1_000_000, hadoop=True, latency_seconds=30,
                   max_idle_seconds=4)
QUICK = BenchConfig(corpus=bench_corpus.QUICK, passes=1, producer_messages=2000, index_documents=200,
                    naive_documents=20, mapreduce_rows=5000, hadoop=False, latency_seconds=4,
                    max_idle_seconds=3, visualize_documents=(1000, 10_000), keep_visualize_indexes=False,
                    sizing_photos=12, sizing_documents=400, label="quick")


# The steps, in the order they run (`--only` picks some). The pipeline's floor is the
# in-memory processing rate, so without in_memory its ratios are left empty.
GROUPS = ("in_memory", "pipelines", "seed", "indexing", "producer", "mapreduce", "visualize", "sizing",
          "enrichment")
# The end-to-end runs, each with its own topic, group, index and output prefix.
PIPELINE_RUNS = ("pipeline-1-worker", "pipeline-2-workers", "latency", "upload-latency", "seed-design-0",
                 "seed-design-1", "seed-pipeline-0", "seed-pipeline-1", "sizing")


def step(name: str):
    print(f"==> {name}", file=sys.stderr, flush=True)
    return time.monotonic()


class Bench:
    def __init__(self, settings: Settings, config: BenchConfig, work: Path, show_progress: bool | None = None,
                 profile: bool = False, only: set[str] | None = None):
        self.settings = settings
        self.profile = profile
        self.only = only  # a subset of GROUPS, or None for all
        self.config = config
        self.work = work
        self.show_progress = show_progress
        self.names = RunNames(uuid.uuid4().hex[:8])
        self.figures: dict[str, Figure] = {}
        self.failures: list[str] = []
        self._topics: list[str] = []
        self._indexes: list[str] = []

    # --- bookkeeping -------------------------------------------------------------------------
    def add(self, *figures: Figure) -> None:
        for figure in figures:
            self.figures[figure.name] = figure

    def failed(self, names: list[str], units: list[str], exc: Exception) -> None:
        reason = " ".join(str(exc).split())[:300]
        self.failures.append(f"{', '.join(names)}: {reason}")
        log.error("%s failed: %s", ", ".join(names), str(exc))
        for name, unit in zip(names, units):
            if name not in self.figures:
                self.add(Figure(name, None, unit, note=f"failed: {reason}"))

    def value(self, name: str) -> float | None:
        figure = self.figures.get(name)
        return figure.value if figure else None

    # --- the steps ------------------------------------------------------------------------------
    def run(self) -> list[Figure]:
        from imgpipe import cli

        step(f"corpus ({self.config.label}); this run's names start with {self.names.topic_prefix}")
        with cli.progress(None, "generating", unit="img", enabled=self.show_progress) as bar:
            items = bench_corpus.build(self.config.corpus)
            bar.update(len(items))
        self.items = items
        log.info("corpus: %d images, %.1f MB", len(items), sum(len(d) for _, d in items) / 1e6)
        try:
            for group in GROUPS:
                if self.only is None or group in self.only:
                    getattr(self, group)()
        finally:
            self.clean_up()
        return list(self.figures.values())

    def guarded(self, names: list[str], units: list[str], body) -> None:
        try:
            body()
        except (BenchError, InfrastructureError, RuntimeError, OSError) as exc:
            self.failed(names, units, exc)
        except Exception as exc:  # a library's own error: still report the other figures
            log.exception("unexpected error")
            self.failed(names, units, exc)

    def in_memory(self) -> None:
        from bench import inmemory

        def body() -> None:
            step("decode_floor, processing_floor (from memory, 1 thread)")
            decode = inmemory.decode_floor(self.items, self.config.passes)
            self.add(decode)
            plain = inmemory.processing_run(self.items, passes=self.config.passes)
            self.add(inmemory.processing_figure("processing_floor", plain, decode, self.config.passes))

        self.guarded(["decode_floor", "processing_floor"], ["images/s"] * 2, body)

    def pipelines(self) -> None:
        if not self._upload():
            return
        summaries: dict[str, dict] = {}
        for workers, name in ((1, "pipeline_1_worker"), (2, "pipeline_2_workers")):
            self.guarded([name], ["images/s"], lambda w=workers, n=name: self._throughput(w, n, summaries))
        self.guarded(["consumer_peak_rss_mb"], ["MB"], lambda: self._peak_memory(summaries))
        self.guarded(["cores_busy", "consumer_cpu_per_image"], ["cores", "ms"], lambda: self._cpu(summaries))
        self.guarded(["latency_p50", "latency_p95"], ["s", "s"], self._latency)
        self.guarded(["latency_upload_p50", "latency_upload_p95"], ["s", "s"], self._upload_latency)

    def seed(self) -> None:
        """pipeline_vs_seed and consumer_startup: a group of its own, so it can run alone."""
        self.guarded(["seed_design", "pipeline_vs_seed", "consumer_startup"], ["images/s", "images/s", "s"],
                     self._seed_comparison)

    def _upload(self) -> bool:
        from demo.corpus import upload_corpus
        from imgpipe import cli

        def upload() -> None:
            step(f"upload the corpus to s3://{self.settings.s3_bucket}/{self.names.raw_prefix}")
            with cli.progress(len(self.items), "uploading", unit="img", enabled=self.show_progress) as bar:
                upload_corpus(self.settings, self.items, self.names.raw_prefix, workers=8,
                              on_item=lambda: bar.update(1))

        failures = len(self.failures)
        self.guarded(["pipeline_1_worker", "pipeline_2_workers", "latency_p50", "latency_p95",
                      "latency_upload_p50", "latency_upload_p95", "consumer_peak_rss_mb"],
                     ["images/s", "images/s", "s", "s", "s", "s", "MB"], upload)
        return len(self.failures) == failures

    def _throughput(self, workers: int, name: str, summaries: dict) -> None:
        from bench.pipeline import throughput_run

        images = len(self.items)
        step(f"{name}: S3 -> Kafka -> consumer --workers {workers} -> S3 + MeiliSearch ({images} images)")
        summary = throughput_run(self.settings, self.names, name.replace("_", "-"), workers, images,
                                 self.config.max_idle_seconds, self.work, profile=self.profile)
        summaries[name] = summary
        floor = self.value("processing_floor")
        self.add(Figure(name, summary["active_images_per_second"], "images/s",
                        floor=floor * workers if floor else None, floor_name=f"processing_floor x {workers}",
                        detail={"images": images, "workers": workers, "configuration": "default",
                                "indexed": summary["indexed"], "dead_lettered": summary["dead_lettered"],
                                "batches": summary["batches"], "active_seconds": summary["active_seconds"],
                                "consumer_seconds": summary["seconds"],
                                "whole_run_images_per_second": summary["images_per_second"],
                                "peak_rss_mb": summary["peak_rss_mb"], **summary["cpu"],
                                "cpu_ms_per_image": summary.get("cpu_ms_per_image"),
                                "cpu_bound_ceiling_images_per_second": summary.get("cpu_bound_ceiling"),
                                "share_of_ceiling": summary.get("share_of_ceiling"),
                                "profiled": self.profile}))

    def _cpu(self, summaries: dict) -> None:
        """How busy the cores were during the 2-worker drain, and the consumer's CPU per image
        (its own and its workers') against processing alone."""
        summary = summaries.get("pipeline_2_workers")
        if summary is None:
            raise BenchError("the 2-worker run did not finish")
        images = summary["indexed"] + summary["dead_lettered"]
        cpu = (summary.get("active_cpu_seconds") or 0) + (summary.get("worker_cpu_seconds") or 0)
        floor = self.value("processing_floor")
        self.add(Figure("cores_busy", summary["cpu"]["cores_busy_while_draining"], "cores",
                        detail={"run": "pipeline_2_workers", "cores": os.cpu_count(),
                                "measure": "busy CPU seconds of the whole machine / wall seconds, from the "
                                           "consumer's first message to its last commit (sampled every 0.1 s)",
                                "whole_run_including_start_up": summary["cpu"]["cores_busy"],
                                "each_half_second": summary["cpu"].get("cores_busy_each_half_second"),
                                "cpu_seconds": summary["cpu"]["cpu_seconds"]}),
                 Figure("consumer_cpu_per_image", 1000 * cpu / images if images else None, "ms",
                        floor=1000 / floor if floor else None, floor_name="processing_floor, ms per image",
                        detail={"consumer_busy_cpu_seconds": summary.get("active_cpu_seconds"),
                                "worker_cpu_seconds": summary.get("worker_cpu_seconds"), "images": images}))

    def _seed_comparison(self) -> None:
        """The brief's straightforward consumer against ours (2 workers), both in their default
        configuration, on the same photo-like 1280x960 JPEGs (with sensor grain), each run twice
        in alternation, the best kept. Both are timed from process start until the last document
        is searchable: what a user waits for, group join, worker start and the last commit included."""
        from bench.pipeline import seed_design_run, throughput_run
        from demo.corpus import upload_corpus

        photos = bench_corpus.seed_comparison_photos(self.config.corpus, self.items)
        prefix = self.names.photos_prefix
        step(f"seed_design vs pipeline (2 workers): {len(photos)} photo-like JPEGs, twice each, alternating, "
             "timed from process start")
        upload_corpus(self.settings, photos, prefix, workers=8)
        seed, ours = [], []
        for round_ in range(2):
            seed.append(seed_design_run(self.settings, self.names, f"seed-design-{round_}", len(photos),
                                        self.config.max_idle_seconds, self.work, prefix))
            ours.append(throughput_run(self.settings, self.names, f"seed-pipeline-{round_}", 2, len(photos),
                                       self.config.max_idle_seconds, self.work, raw_prefix=prefix))
        best_seed = max(s["from_start_images_per_second"] for s in seed)
        best_ours = max(s["from_start_images_per_second"] for s in ours)
        detail = {"images": len(photos), "rounds": 2, "configuration": "default (both)",
                  "measure": "images / (process start -> the index's last document task finished)",
                  "seed_design_images_per_second": [round(s["from_start_images_per_second"], 1) for s in seed],
                  "pipeline_images_per_second": [round(s["from_start_images_per_second"], 1) for s in ours],
                  "seed_design_seconds": [round(s["from_start_seconds"], 2) for s in seed],
                  "pipeline_seconds": [round(s["from_start_seconds"], 2) for s in ours],
                  "active_rates_first_message_to_last_commit": {
                      "seed_design": [round(s["active_images_per_second"], 1) for s in seed],
                      "pipeline": [round(s["active_images_per_second"], 1) for s in ours]},
                  "seed_design": "bench/seed_design.py: GET, full decode, resize, grayscale, add_documents([doc]) "
                                 "per message, never waiting for the task; one process"}
        startups = [s["startup_seconds"] for s in ours if s.get("startup_seconds") is not None]
        first_messages = [s["first_message_seconds"] for s in ours if s.get("first_message_seconds") is not None]
        self.add(Figure("seed_design", best_seed, "images/s", detail=detail),
                 Figure("pipeline_vs_seed", best_ours, "images/s", floor=best_seed, floor_name="seed_design",
                        detail=detail),
                 Figure("consumer_startup", min(startups) if startups else None, "s",
                        detail={"measure": "consumer process start -> its first image processed (topics, bucket "
                                           "and index checked, group joined, workers started, the image "
                                           "fetched, processed and its derived images written); the topic "
                                           "already holds every event",
                                "runs": startups, "first_message_runs": first_messages, "workers": 2}))

    def _peak_memory(self, summaries: dict) -> None:
        if not summaries:
            raise BenchError("no pipeline run finished")
        run, summary = max(summaries.items(), key=lambda kv: kv[1]["peak_rss_mb"])
        bombs = [key for key, _ in self.items if "bomb" in key or "huge-" in key or "budget-" in key]
        self.add(Figure("consumer_peak_rss_mb", summary["peak_rss_mb"], "MB",
                        detail={"run": run, "per_run": {k: v["peak_rss_mb"] for k, v in summaries.items()},
                                "worker_peak_rss_mb": {k: v.get("worker_peak_rss_mb") for k, v in summaries.items()},
                                "images": len(self.items), "decompression_bombs_and_budget_busters": bombs,
                                "dead_letter_reasons": summary.get("dead_letter_reasons", {}),
                                "measure": "the consumer's own peak resident memory (VmHWM); images are decoded "
                                           "in its worker processes, whose largest peak is worker_peak_rss_mb"}))

    def _latency(self) -> None:
        from bench.pipeline import latency_run

        throughput = self.value("pipeline_2_workers") or self.value("pipeline_1_worker")
        if not throughput:
            raise BenchError("no throughput measured to set the rate from")
        rate = throughput / 2
        count = min(len(self.items), max(20, round(rate * self.config.latency_seconds)))
        step(f"latency: producer --rate {rate:.1f} (half of {throughput:.1f} images/s) for {count} events, "
             "consumer --workers 2")
        summary = latency_run(self.settings, self.names, "latency", 2, rate, count,
                              max(self.config.max_idle_seconds, 5), self.work)
        detail = {"rate": round(rate, 2), "events": count, "workers": 2, "configuration": "default",
                  "measure": "event_time (producer) -> index task succeeded (consumer)",
                  "batch_ms": self.settings.consumer_batch_ms, "batch_size": self.settings.consumer_batch_size,
                  "batches": summary["batches"],
                  "producer_events_per_second": summary["producer"].get("events_per_second")}
        self.add(Figure("latency_p50", summary["latency_p50_s"], "s", detail=detail),
                 Figure("latency_p95", summary["latency_p95_s"], "s", detail=detail))

    def _upload_latency(self) -> None:
        from bench.upload_latency import upload_latency_run

        throughput = self.value("pipeline_2_workers") or self.value("pipeline_1_worker")
        if not throughput:
            raise BenchError("no throughput measured to set the rate from")
        rate = throughput / 2
        count = min(len(self.items), max(20, round(rate * self.config.latency_seconds)))
        step(f"latency_upload: PUT {count} images at {rate:.1f}/s (half of {throughput:.1f} images/s) -> versitygw "
             "notification in Kafka -> producer --notifications-topic -> consumer --workers 2")
        summary = upload_latency_run(self.settings, self.names, "upload-latency", 2, rate, self.items[:count],
                                     max(self.config.max_idle_seconds, 5), self.work)
        detail = {"rate": round(rate, 2), "uploads": count, "workers": 2, "configuration": "default",
                  "measure": "versitygw's eventTime of the PUT (refined to the ms by its notification's Kafka "
                             "CreateTime) -> index task succeeded (consumer)",
                  "s3": "the local stack's versitygw, its bucket notifications to Kafka",
                  "upload_seconds": summary["upload_seconds"], "batches": summary["batches"],
                  "indexed": summary["indexed"], "dead_lettered": summary["dead_lettered"],
                  "consumer_images_per_second": summary["active_images_per_second"],
                  "put_to_notification": summary["put_to_notification"], "put_to_event": summary["put_to_event"],
                  "producer": summary["producer"]}
        self.add(Figure("latency_upload_p50", summary["latency_p50_s"], "s", detail=detail),
                 Figure("latency_upload_p95", summary["latency_p95_s"], "s", detail=detail))

    def indexing(self) -> None:
        from bench.indexing import index_names, indexing_figure

        def body() -> None:
            step(f"indexing_batched: {self.config.index_documents} documents batched, "
                 f"{self.config.naive_documents} one per request, best of {self.config.passes}")
            prefix = f"{self.names.index_prefix}_indexing"
            self._indexes += index_names(prefix, self.config.passes)
            self.add(indexing_figure(self.settings, self.config.index_documents, self.config.naive_documents,
                                     prefix, rounds=self.config.passes))

        self.guarded(["indexing_batched"], ["docs/s"], body)

    def sizing(self) -> None:
        """Images/s per core with the default configuration and MeiliSearch's indexing ceiling, for
        the README's sizing table (bench/sizing.py)."""
        from bench import sizing
        from bench.pipeline import throughput_run
        from demo.corpus import upload_corpus
        from fixtures.documents import sample_documents

        def body() -> None:
            photos = [(k, d) for k, d in self.items if bench_corpus.kind(k) == "photo"][:self.config.sizing_photos]
            prefix = f"{self.names.s3_prefix}sizing/raw/"
            step(f"sizing: consumer with its default workers (one per core) on {len(photos)} photo-like JPEGs")
            upload_corpus(self.settings, photos, prefix, workers=8)
            summary = throughput_run(self.settings, self.names, "sizing", 0, len(photos),
                                     self.config.max_idle_seconds, self.work, raw_prefix=prefix)
            step(f"sizing: MeiliSearch's ceiling, {self.config.sizing_documents} documents from "
                 f"{sizing.WRITERS} writers at once")
            index = f"{self.names.index_prefix}_ceiling"
            self._indexes.append(index)
            ceiling = sizing.indexing_ceiling(self.settings, index, sample_documents(self.config.sizing_documents,
                                                                                      seed=13))
            step(f"sizing: the same {len(photos)} photos processed from memory, 1 thread (the floor)")
            floor = sizing.cpu_floor(photos, self.config.passes)
            self.add(*sizing.sizing_figures(summary, len(photos), ceiling, floor))

        self.guarded(["sizing_images_per_core", "meilisearch_indexing_ceiling"], ["images/s", "docs/s"], body)

    def producer(self) -> None:
        from bench.producing import producer_figure

        def body() -> None:
            step(f"producer: {self.config.producer_messages} events, EventSender vs a bare produce loop")
            prefix = f"{self.names.topic_prefix}-producer"
            self._topics += [f"{prefix}-bare", f"{prefix}-sender"]
            self.add(producer_figure(self.settings, self.config.producer_messages, prefix,
                                     rounds=max(2, self.config.passes)))

        self.guarded(["producer"], ["messages/s"], body)

    def mapreduce(self) -> None:
        from bench.mapreduce import mapreduce_figures

        hadoop, reason = self.config.hadoop, "--quick" if self.config.label == "quick" else "--no-hadoop"
        if hadoop and not shutil.which("java"):
            hadoop, reason = False, "no Java on PATH"

        summary: list[Figure] = []

        def body() -> None:
            step(f"mapreduce: {self.config.mapreduce_rows:,} rows, pipe" + (" and hadoop" if hadoop else ""))
            cache = self.settings.local_state_dir / "bench"
            summary.extend(mapreduce_figures(self.settings, self.config.mapreduce_rows, cache, self.work, hadoop,
                                             reason))
            self.add(*summary)

        self.guarded(["mapreduce_pipe", "mapreduce_hadoop"], ["rows/s", "rows/s"], body)

        def duplicates() -> None:
            from bench.duplicates import duplicates_figures
            from bench.mapreduce import sample_csv

            step(f"mapreduce: the duplicates job on {self.config.mapreduce_rows:,} rows (pipe), "
                 "and against brute force on planted rows")
            csv_path = sample_csv(self.config.mapreduce_rows, self.settings.local_state_dir / "bench")
            floor = next((f.value for f in summary if f.name == "mapreduce_pipe"), None)
            self.add(*duplicates_figures(csv_path, self.config.mapreduce_rows, self.work, floor))

        self.guarded(["mapreduce_duplicates", "duplicates_precision", "duplicates_recall"],
                     ["rows/s", "share", "share"], duplicates)

    def visualize(self) -> None:
        from bench.visualize import visualize_figures

        small, large = self.config.visualize_documents

        def body() -> None:
            step(f"visualize: report.py on indexes of {small:,} and {large:,} generated documents "
                 "(built once, then kept)" if self.config.keep_visualize_indexes else
                 f"visualize: report.py on indexes of {small:,} and {large:,} generated documents")
            self.add(*visualize_figures(self.settings, small, large, self.work, self.config.passes,
                                        keep=self.config.keep_visualize_indexes, show_progress=self.show_progress))

        self.guarded(["visualize_100k", "visualize_100k_peak_rss_mb", "visualize_1m", "visualize_1m_peak_rss_mb"],
                     ["s", "MB", "s", "MB"], body)

    def enrichment(self) -> None:
        from bench.enrichment import QUICK_SIZES, Sizes, enrichment_figures

        names = ["faces_recall_40px", "faces_false_per_1000", "faces_cpu_ms", "ocr_cer_16px", "ocr_cer_12px",
                 "ocr_cer_captcha", "enricher_faces", "enricher_text"]

        def body() -> None:
            step("enrichment: the face table (Haar vs YuNet at 160-480 px), OCR error rates, models' CPU")
            photos = [data for key, data in self.items if bench_corpus.is_photo_like(key)]
            self.add(*enrichment_figures(QUICK_SIZES if self.config.label == "quick" else Sizes(), photos))

        self.guarded(names, ["share", "per 1,000", "ms", "CER", "CER", "CER", "images/s", "images/s"], body)

    # --- clean-up ---------------------------------------------------------------------------
    def clean_up(self) -> None:
        """Delete this run's indexes, topics and S3 objects (the local S3 keeps them on disk)."""
        step("clean-up")
        for run in PIPELINE_RUNS:
            settings = self.names.settings(self.settings, run)
            self._indexes.append(settings.meili_index)
            self._topics += [settings.kafka_topic, settings.kafka_dead_letter_topic, settings.kafka_indexed_topic]
        for what, action in (("indexes", self._delete_indexes), ("topics", self._delete_topics),
                             ("S3 objects", self._delete_objects)):
            try:
                action()
            except Exception as exc:  # clean-up must not hide the results
                log.warning("could not delete this run's %s: %s", what, exc)

    def _delete_indexes(self) -> None:
        for name in sorted(set(self._indexes)):
            meili.delete_index(self.settings, name, key=self.settings.meili_master_key)

    def _delete_topics(self) -> None:
        kafka.delete_topics(self.settings, self._topics)

    def _delete_objects(self) -> None:
        s3.delete_prefix(s3.client(self.settings), self.settings.s3_bucket, self.names.s3_prefix)
