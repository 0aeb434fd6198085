"""The whole pipeline, step by step, with the project's real scripts as subprocesses.

Each step is what a user would type; this module only runs them in order, times them, and
checks the numbers they report against each other at the end.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from imgpipe import cli, kafka, meili
from imgpipe.settings import REPO_ROOT, Settings, to_env


class StepFailed(Exception):
    def __init__(self, step: str, detail: str):
        super().__init__(f"{step} failed: {detail}")
        self.step = step


@dataclass
class DemoReport:
    steps: list[tuple[str, float]] = field(default_factory=list)  # (step, seconds)
    uploaded: int = 0
    produced: int = 0
    indexed: int = 0
    dead_lettered: int = 0
    dead_letters: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    images_per_second: float | None = None
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    index_documents: int = 0
    exported_rows: int = 0
    mapreduce_runner: str = ""
    mapreduce_seconds: float = 0.0
    mapreduce_format_count: int = 0
    duplicate_groups: list[tuple[str, int, list[str]]] = field(default_factory=list)  # (kind, size, keys)
    planted_groups_found: int = 0
    planted_groups: int = 0
    charts: list[str] = field(default_factory=list)
    enriched: int = 0
    enricher_dead_lettered: int = 0
    with_faces: list[tuple[str, int]] = field(default_factory=list)  # (key, faces)
    text_word: str = ""
    text_hits: list[tuple[str, str]] = field(default_factory=list)  # (key, the line the word is in)
    live: "LiveReport | None" = None

    def as_dict(self) -> dict:
        from dataclasses import asdict, is_dataclass

        return {k: asdict(v) if is_dataclass(v) else v for k, v in self.__dict__.items()}


def run_step(name: str, args: list[str], settings: Settings, report: DemoReport, capture: bool = False) -> str:
    """Run one script; its progress bars and summary go straight to the terminal."""
    print(f"\n==> {name}: {' '.join(args)}", file=sys.stderr, flush=True)
    started = time.monotonic()
    result = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env={**os.environ, **to_env(settings)},
                            stdout=subprocess.PIPE if capture else None, text=True)
    report.steps.append((name, time.monotonic() - started))
    if result.returncode != 0:
        raise StepFailed(name, f"exit status {result.returncode}")
    return result.stdout or ""


def read_dead_letters(settings: Settings, start: dict[int, int]) -> list[tuple[str, str]]:
    """The (key, reason) of every dead letter written after `start` (high watermarks taken before)."""
    letters = []
    for msg in kafka.read_messages(settings, settings.kafka_dead_letter_topic, start=start):
        headers = {k: v.decode("utf-8", "replace") for k, v in (msg.headers() or [])}
        try:
            key = json.loads(msg.value())["key"]
        except Exception:  # a malformed message has no key to show; its Kafka key will do
            key = (msg.key() or b"?").decode("utf-8", "replace")
        letters.append((key, f"{headers.get('stage', '?')}: {headers.get('reason', '?')}"))
    return sorted(letters)


def run_demo(settings: Settings, count: int, out: Path, runner: str, seed: int = 0) -> DemoReport:
    from demo.corpus import build_corpus, scan_items, upload_corpus

    report = DemoReport()
    out.mkdir(parents=True, exist_ok=True)

    print(f"\n==> seeding {count} demo images into s3://{settings.s3_bucket}/{settings.s3_raw_prefix}",
          file=sys.stderr, flush=True)
    started = time.monotonic()
    with cli.progress(count, "generate", unit="img") as bar:
        items = build_corpus(count, seed=seed, on_item=lambda: bar.update(1)) + scan_items()
    with cli.progress(len(items), "upload", unit="img") as bar:
        report.uploaded = upload_corpus(settings, items, on_item=lambda: bar.update(1))
    report.steps.append(("seed corpus", time.monotonic() - started))

    producer_summary = out / "producer_summary.json"
    consumer_summary = out / "consumer_summary.json"
    run_step("produce", ["producer/image_producer.py", "--summary-json", str(producer_summary)], settings, report)
    report.produced = json.loads(producer_summary.read_text())["sent"]

    dead_start = kafka.end_offsets(settings, settings.kafka_dead_letter_topic)
    run_step("consume", ["consumer/image_consumer.py", "--max-idle-seconds", "5", "--status-interval", "5",
                         "--summary-json", str(consumer_summary)], settings, report)
    consumed = json.loads(consumer_summary.read_text())
    report.indexed = consumed["indexed"]
    report.dead_lettered = consumed["dead_lettered"]
    report.images_per_second = consumed["images_per_second"]
    report.latency_p50_s = consumed["latency_p50_s"]
    report.latency_p95_s = consumed["latency_p95_s"]
    report.dead_letters = read_dead_letters(settings, dead_start)
    report.index_documents = meili.document_count(settings, settings.meili_index)
    enrich(settings, out, report)

    csv_path = out / "image_metadata.csv"
    run_step("export CSV", ["mapreduce/export_csv.py", "--out", str(csv_path)], settings, report)
    with open(csv_path, encoding="utf-8") as fh:
        report.exported_rows = sum(1 for _ in fh) - 1

    report.mapreduce_runner = runner
    mapreduce_dir = out / "mapreduce"
    run_step(f"MapReduce ({runner})", ["mapreduce/run_job.py", "--runner", runner, "--input", str(csv_path),
                                       "--output", str(mapreduce_dir), "--overwrite"], settings, report)
    report.mapreduce_seconds = report.steps[-1][1]
    report.mapreduce_format_count = sum(
        int(line.split("\t")[2]) for part in sorted(mapreduce_dir.glob("part-*"))
        for line in part.read_text().splitlines() if line.startswith("format\t"))

    duplicates_dir = out / "duplicates"
    run_step(f"duplicates ({runner})", ["mapreduce/run_job.py", "--job", "duplicates", "--runner", runner,
                                        "--input", str(csv_path), "--output", str(duplicates_dir), "--overwrite"],
             settings, report)
    report.duplicate_groups = duplicate_groups(duplicates_dir, csv_path)
    report.planted_groups, report.planted_groups_found = planted_groups_found(settings, report.duplicate_groups)

    before = time.time()
    run_step("visualize", ["visualize/report.py", "--out", str(out), "--mapreduce-dir", str(mapreduce_dir),
                           "--duplicates-dir", str(duplicates_dir),
                           "--consumer-summary", str(consumer_summary)], settings, report)
    report.charts = sorted(str(p) for p in out.glob("*.png") if p.stat().st_mtime >= before - 1)
    report.live = run_live_step(settings, out, report)
    return report


def enrich(settings: Settings, out: Path, report: DemoReport) -> None:
    """The enricher after the core consumer: faces and text added to what was indexed; then the
    images with faces, and a search by a word that is only inside an image."""
    from demo.corpus import SCAN_WORD
    from visualize.search import matching_lines

    summary_path = out / "enricher_summary.json"
    run_step("enrich (faces, text)", ["enricher/image_enricher.py", "--max-idle-seconds", "5", "--status-interval",
                                      "5", "--summary-json", str(summary_path)], settings, report)
    summary = json.loads(summary_path.read_text())
    report.enriched = summary["enriched"]
    report.enricher_dead_lettered = summary["dead_lettered"]
    faces = meili.search(settings, settings.meili_index, "", {"filter": "faces > 0", "limit": 1000,
                                                              "sort": ["faces:desc"], "attributesToRetrieve": ["key", "faces"]})
    report.with_faces = [(hit["key"], hit["faces"]) for hit in faces["hits"]]
    from visualize.search import MATCH_END, MATCH_START

    found = meili.search(settings, settings.meili_index, SCAN_WORD, {
        "limit": 20, "attributesToRetrieve": ["key"], "attributesToHighlight": ["text"],
        "highlightPreTag": MATCH_START, "highlightPostTag": MATCH_END})
    report.text_word = SCAN_WORD
    report.text_hits = [(hit["key"], (matching_lines(hit) or [("", [])])[0][0]) for hit in found["hits"]]


def duplicate_groups(duplicates_dir: Path, csv_path: Path) -> list[tuple[str, int, list[str]]]:
    """(kind, size, object keys) of every group the duplicates job wrote, keys from the export."""
    import csv

    from visualize.duplicates import find_output, read_groups

    found = find_output(duplicates_dir)
    if found is None:
        return []
    groups, _ = read_groups(found)
    with open(csv_path, encoding="utf-8", newline="") as fh:
        key_of = {row["id"]: row["key"] for row in csv.DictReader(fh)}
    return [(g.kind, g.size, sorted(key_of.get(i, i) for i in g.ids)) for g in groups]


def planted_groups_found(settings: Settings, groups) -> tuple[int, int]:
    """(planted groups, how many of them a near group holds whole)."""
    from demo.corpus import DUPLICATE_KINDS, DUPLICATE_SOURCES

    near = [set(keys) for kind, _, keys in groups if kind == "near"]
    found = 0
    for name in DUPLICATE_SOURCES:
        planted = {f"{settings.s3_raw_prefix}dupes/{name}-{kind}.jpg" for kind in DUPLICATE_KINDS}
        found += any(planted <= group for group in near)
    return len(DUPLICATE_SOURCES), found


def default_runner() -> str:
    """The real Hadoop runner when Java is there to run it; the shell pipe otherwise."""
    return "hadoop" if shutil.which("java") and shutil.which("mvn") else "pipe"


# --- real time: the S3 server's bucket notifications -----------------------------------------------
LIVE_UPLOADS = 5


@dataclass
class LiveReport:
    """The real-time step: each upload's seconds from its PUT returning to its document found."""
    warm_up_s: float | None = None  # the first upload, which also waits for both processes to start
    uploads: list[tuple[str, float]] = field(default_factory=list)  # (key, seconds)
    deleted_key: str = ""
    delete_s: float | None = None  # DELETE returned -> the document gone


def _searchable(settings: Settings, key: str, etag: str | None, timeout: float = 60.0) -> float:
    """Seconds until the document of `key` with this ETag is found by search (etag None: until no
    document of `key` is found any more)."""
    from imgpipe.document import document_id

    started = time.monotonic()
    query = {"filter": f'id = "{document_id(settings.s3_bucket, key)}"', "limit": 1,
             "attributesToRetrieve": ["etag"]}
    while time.monotonic() - started < timeout:
        hits = meili.search(settings, settings.meili_index, "", query)["hits"]
        if (etag is None and not hits) or (etag is not None and hits and hits[0].get("etag") == etag):
            return time.monotonic() - started
        time.sleep(0.02)
    raise StepFailed("real time", f"{key} was {'still' if etag is None else 'not'} searchable after {timeout:.0f} s")


def run_live_step(settings: Settings, out: Path, report: DemoReport) -> LiveReport:
    """Uploads with a plain S3 client while the producer reads the S3 server's notifications and the
    consumer runs: PUT -> searchable for each, then a delete -> gone from the index."""
    from fixtures.images import encode, gradient_pattern
    from imgpipe import s3
    from producer.topic_mode import notifications_group, skip_backlog

    topic = settings.s3_notifications_topic
    print(f"\n==> real time: uploads with a plain S3 client; the producer reads the S3 server's notifications "
          f"from Kafka topic {topic}", file=sys.stderr, flush=True)
    if not topic:
        raise StepFailed("real time", "S3_NOTIFICATIONS_TOPIC is empty: the local S3 server notifies nothing")
    started = time.monotonic()
    # The batch run announced everything already: the notifications of its uploads are not sent again.
    skip_backlog(settings, topic, notifications_group(settings))
    env = {**os.environ, **to_env(settings)}
    logs = {name: open(out / f"live-{name}.log", "wb") for name in ("producer", "consumer")}
    processes = {
        "producer": subprocess.Popen([sys.executable, "producer/image_producer.py", "--notifications-topic",
                                      "--no-progress"], cwd=REPO_ROOT, env=env, stdout=logs["producer"],
                                     stderr=subprocess.STDOUT),
        "consumer": subprocess.Popen([sys.executable, "consumer/image_consumer.py", "--no-progress"], cwd=REPO_ROOT,
                                     env=env, stdout=logs["consumer"], stderr=subprocess.STDOUT),
    }
    live = LiveReport()
    client = s3.client(settings)
    keys = [f"{settings.s3_raw_prefix}live/upload-{i}.png" for i in range(LIVE_UPLOADS + 1)]
    try:
        run_seed = int(time.time())  # new bytes each run: the document found must be this upload's
        for i, key in enumerate(keys):
            image = encode(gradient_pattern(640, 480, seed=run_seed + i), ".png")
            put = client.put_object(Bucket=settings.s3_bucket, Key=key, Body=image, ContentType="image/png")
            seconds = _searchable(settings, key, put["ETag"].strip('"'), timeout=120 if i == 0 else 30)
            if i == 0:
                live.warm_up_s = seconds
                print(f"  {key}: searchable {seconds:.2f} s after its PUT (the first: both processes were "
                      "starting)", file=sys.stderr, flush=True)
            else:
                live.uploads.append((key, seconds))
                print(f"  {key}: searchable {seconds:.2f} s after its PUT", file=sys.stderr, flush=True)
            for name, process in processes.items():
                if process.poll() is not None:
                    raise StepFailed("real time", f"the {name} exited with status {process.returncode}; "
                                                  f"see {out / f'live-{name}.log'}")
        live.deleted_key = keys[-1]
        client.delete_object(Bucket=settings.s3_bucket, Key=live.deleted_key)
        live.delete_s = _searchable(settings, live.deleted_key, None, timeout=30)
        print(f"  deleted {live.deleted_key}: gone from the index {live.delete_s:.2f} s after its DELETE",
              file=sys.stderr, flush=True)
        # Leave the bucket and the index as the batch run left them, so a second demo exports,
        # counts and charts the same images: the other uploads go the same way, by notification.
        rest = [key for key in keys if key != live.deleted_key]
        s3.delete_keys(client, settings.s3_bucket, rest)
        for key in rest:
            _searchable(settings, key, None, timeout=30)
        print(f"  deleted the other {len(rest)} uploads again: gone from the index too", file=sys.stderr, flush=True)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # our own children, by their handles
        for name, process in processes.items():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            logs[name].close()
    report.steps.append(("real time (notifications)", time.monotonic() - started))
    return live
