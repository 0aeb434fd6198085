"""End-to-end runs: S3 -> producer -> Kafka -> consumer -> S3 + MeiliSearch, with the real
scripts as subprocesses, each run on its own topic, group, index and output prefix.

Throughput comes from the consumer's summary (`active_images_per_second`: first message to
last commit, so start-up and the idle tail before --max-idle-seconds are left out) and, for the
comparison with the naive design, from process start until the last document is searchable
(`from_start_seconds`: the spawn of the process to the finish of the index's last task, as
MeiliSearch records it, so group join, worker start and the last commit are all inside). Where the
CPU went during a run is measured too: the consumer (its rusage as a child of this process),
each local service (psutil), and the whole machine, whose remainder is other people's work.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from imgpipe import access, kafka, meili
from imgpipe.settings import REPO_ROOT, Settings, to_env


class BenchError(Exception):
    """A benchmark step could not run or its counts do not add up."""


@dataclass(frozen=True)
class RunNames:
    """Per-run names, in the style of tests/conftest.py's `settings` fixture."""

    run_id: str

    @property
    def raw_prefix(self) -> str:
        return f"bench-{self.run_id}/raw/"

    @property
    def s3_prefix(self) -> str:
        return f"bench-{self.run_id}/"

    @property
    def topic_prefix(self) -> str:
        return f"bench-{self.run_id}"

    @property
    def index_prefix(self) -> str:
        return f"bench_{self.run_id}"

    @property
    def photos_prefix(self) -> str:
        """Where the photo-only corpus of the seed_design comparison goes."""
        return f"bench-{self.run_id}/photos/"

    def settings(self, base: Settings, step: str, raw_prefix: str | None = None) -> Settings:
        return base.with_overrides(
            kafka_topic=f"bench-{self.run_id}-{step}", kafka_dead_letter_topic=f"bench-{self.run_id}-{step}-dlq",
            kafka_indexed_topic=f"bench-{self.run_id}-{step}-indexed",
            kafka_consumer_group=f"bench-{self.run_id}-{step}", meili_index=f"bench_{self.run_id}_{step}",
            s3_raw_prefix=raw_prefix or self.raw_prefix, s3_processed_prefix=f"bench-{self.run_id}/{step}/processed/",
            sqs_queue_url="")  # the producer runs list the bucket unless a run says otherwise


def prepare_index(settings: Settings, embedder: bool = True) -> None:
    """Make the run's index as set-up does (with the master key): the stack's consumer key may
    write to bench_* indexes but not create them."""
    access.prepare_index(settings, settings.meili_master_key, settings.meili_index, embedder=embedder)


def child_env(settings: Settings) -> dict[str, str]:
    env = {**os.environ, **to_env(settings)}
    # This process set it when it imported the consumer's guard; the child works it out itself.
    env.pop("OPENCV_IO_MAX_IMAGE_PIXELS", None)
    return env


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_script(script: str, args: list[str], settings: Settings, log_path: Path, timeout: float,
               profile: Path | None = None) -> None:
    """Run one of the project's scripts; with `profile`, under pyinstrument (main thread only),
    its report written there as text."""
    wrapper = ["-m", "pyinstrument", "-r", "text", "-o", str(profile)] if profile else []
    with open(log_path, "wb") as log:
        try:
            code = subprocess.run([sys.executable, *wrapper, str(REPO_ROOT / script), *args], env=child_env(settings),
                                  cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            raise BenchError(f"{script} did not finish within {timeout:.0f} s; see {log_path}") from None
    if code != 0:
        raise BenchError(f"{script} exited with status {code}:\n{_tail(log_path)}")


def start_script(script: str, args: list[str], settings: Settings, log_path: Path) -> subprocess.Popen:
    log = open(log_path, "wb")
    try:
        return subprocess.Popen([sys.executable, str(REPO_ROOT / script), *args], env=child_env(settings),
                                cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()  # the child holds its own copy


class BusySampler:
    """The machine's busy CPU seconds, sampled every 0.1 s in a thread, so that the cores in use
    can be read over any span afterwards (the consumer's busy span, without its start-up)."""

    def __init__(self, interval: float = 0.1):
        import threading

        import psutil

        self._psutil = psutil
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _busy(self) -> float:
        t = self._psutil.cpu_times()
        return t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self._busy()))
            self._stop.wait(interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def cores_busy(self, start: float | None, end: float | None) -> float | None:
        inside = [(t, busy) for t, busy in self.samples if start is not None and end is not None and start <= t <= end]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        return round((inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0]), 2)

    def timeline(self, start: float | None, end: float | None, step: float = 0.5) -> list[float]:
        """Cores busy in each `step` seconds from `start` to `end`: where a drain left cores idle."""
        if start is None or end is None:
            return []
        result, at = [], start
        while at < end:
            value = self.cores_busy(at, min(at + step, end))
            if value is not None:
                result.append(value)
            at += step
        return result


class CpuMeter:
    """CPU seconds of waited-for children, of each local service, and of the whole machine."""

    def __init__(self, settings: Settings):
        import psutil

        from stack.services import all_services

        self._psutil = psutil
        self.services = {}
        for service in all_services(settings):
            pid = service.pid()
            if pid is not None:
                try:
                    self.services[service.name] = psutil.Process(pid)
                except psutil.Error:
                    pass

    def snapshot(self) -> dict[str, float]:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        machine = self._psutil.cpu_times()
        values = {"children": children.ru_utime + children.ru_stime,
                  "machine": machine.user + machine.system + getattr(machine, "nice", 0.0)
                  + getattr(machine, "irq", 0.0) + getattr(machine, "softirq", 0.0),
                  "wall": time.monotonic()}
        for name, process in self.services.items():
            try:
                times = process.cpu_times()
                values[name] = times.user + times.system
            except self._psutil.Error:
                values[name] = float("nan")
        return values

    @staticmethod
    def difference(before: dict, after: dict, child_name: str) -> dict:
        """CPU seconds per consumer of CPU between two snapshots, and the machine's cores in use."""
        wall = after["wall"] - before["wall"]
        used = {child_name: after["children"] - before["children"]}
        for name in before:
            if name not in ("children", "machine", "wall"):
                used[name] = after[name] - before[name]
        machine = after["machine"] - before["machine"]
        # Per-process and machine-wide counters tick separately: a small negative remainder is noise.
        used["everything else on the machine"] = max(0.0, machine - sum(used.values()))
        return {"wall_seconds": round(wall, 2), "cpu_seconds": {k: round(v, 2) for k, v in used.items()},
                "cores_busy": round(machine / wall, 2) if wall > 0 else None}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BenchError(f"cannot read {path}: {exc}") from None


def produce_all(settings: Settings, work: Path, step: str, expected: int, extra: list[str] = ()) -> dict:
    summary_path = work / f"{step}-producer.json"
    run_script("producer/image_producer.py", ["--no-progress", "--summary-json", str(summary_path), *extra],
               settings, work / f"{step}-producer.log", timeout=600)
    summary = _read_json(summary_path)
    if summary.get("sent") != expected:
        raise BenchError(f"{step}: the producer sent {summary.get('sent')} events, expected {expected}")
    return summary


def consumer_args(workers: int, max_idle: float, summary_path: Path) -> list[str]:
    # The default configuration, what users run: no option changes what the consumer does.
    return ["--workers", str(workers), "--max-idle-seconds", str(max_idle),
            "--status-interval", "3600", "--no-progress", "--summary-json", str(summary_path)]


def check_consumed(settings: Settings, step: str, summary: dict, expected: int) -> None:
    done = summary["indexed"] + summary["dead_lettered"]
    if done != expected:
        raise BenchError(f"{step}: the consumer indexed {summary['indexed']} and dead-lettered "
                         f"{summary['dead_lettered']} of {expected} events")
    documents = meili.document_count(settings, settings.meili_index)
    if documents != summary["indexed"]:
        raise BenchError(f"{step}: the index holds {documents} documents, the consumer indexed {summary['indexed']}")


def throughput_run(base: Settings, names: RunNames, step: str, workers: int, expected: int,
                   max_idle: float, work: Path, profile: bool = False, raw_prefix: str | None = None) -> dict:
    """Produce every event first, then drain the topic with one consumer of `workers` workers.
    Returns the consumer's summary plus `cpu` (where the CPU went while it ran) and
    `cpu_ms_per_image` (the consumer's over its busy span, each local service's over the run)."""
    settings = names.settings(base, step, raw_prefix)
    kafka.ensure_topics(settings, [settings.kafka_topic, settings.kafka_dead_letter_topic])
    prepare_index(settings)
    produce_all(settings, work, step, expected)
    summary_path = work / f"{step}-consumer.json"
    meter = CpuMeter(base)
    before = meter.snapshot()
    with BusySampler() as sampler:
        spawned, spawned_wall = time.monotonic(), time.time()
        run_script("consumer/image_consumer.py", consumer_args(workers, max_idle, summary_path), settings,
                   work / f"{step}-consumer.log", timeout=1800,
                   profile=work / f"{step}-consumer-profile.txt" if profile else None)
    after = meter.snapshot()
    summary = _read_json(summary_path)
    check_consumed(settings, step, summary, expected)
    summary["from_start_seconds"] = last_task_finished(settings) - spawned_wall
    summary["from_start_images_per_second"] = expected / summary["from_start_seconds"]
    if summary.get("first_message_monotonic") is not None:
        summary["first_message_seconds"] = round(summary["first_message_monotonic"] - spawned, 3)
    if summary.get("first_processed_monotonic") is not None:
        # Start-up as the issue defines it: process start -> the first image processed.
        summary["startup_seconds"] = round(summary["first_processed_monotonic"] - spawned, 3)
    summary["cpu"] = CpuMeter.difference(before, after, "consumer (whole run, incl. start-up)")
    summary["cpu"]["cores_busy_while_draining"] = sampler.cores_busy(summary.get("first_message_monotonic"),
                                                                     summary.get("last_committed_monotonic"))
    summary["cpu"]["cores_busy_each_half_second"] = sampler.timeline(summary.get("first_message_monotonic"),
                                                                     summary.get("last_committed_monotonic"))
    per_image = {"consumer (busy span)": summary.get("active_cpu_seconds"),
                 "consumer's processing workers": summary.get("worker_cpu_seconds")}
    per_image.update({name: seconds for name, seconds in summary["cpu"]["cpu_seconds"].items()
                      if name in meter.services})
    if all(v is not None for v in per_image.values()):
        per_image_ms = {name: round(1000 * seconds / expected, 2) for name, seconds in per_image.items()}
        summary["cpu_ms_per_image"] = per_image_ms
        # What this machine could do if every core were busy with this pipeline and nothing else.
        summary["cpu_bound_ceiling"] = round((os.cpu_count() or 1) * 1000 / sum(per_image_ms.values()), 1)
        if summary.get("active_images_per_second"):
            summary["share_of_ceiling"] = round(summary["active_images_per_second"] / summary["cpu_bound_ceiling"], 3)
    return summary


def _wait_for_assignment(process: subprocess.Popen, log_path: Path, topic: str, timeout: float) -> None:
    """The consumer logs `assigned <topic>[<partition>], ...` once the group gave it partitions."""
    deadline = time.monotonic() + timeout
    needle = f"assigned {topic}["
    while time.monotonic() < deadline:
        if needle in log_path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise BenchError(f"the consumer exited with status {process.returncode} before it was assigned "
                             f"partitions:\n{_tail(log_path)}")
        time.sleep(0.2)
    raise BenchError(f"the consumer had no partitions after {timeout:.0f} s; see {log_path}")


def latency_run(base: Settings, names: RunNames, step: str, workers: int, rate: float, count: int,
                max_idle: float, work: Path) -> dict:
    """A consumer waiting on an empty topic, then the producer at a steady `rate` for `count`
    events; returns the consumer's summary (latency: event_time -> index task succeeded)."""
    settings = names.settings(base, step)
    kafka.ensure_topics(settings, [settings.kafka_topic, settings.kafka_dead_letter_topic])
    prepare_index(settings)
    summary_path = work / f"{step}-consumer.json"
    log_path = work / f"{step}-consumer.log"
    consumer = start_script("consumer/image_consumer.py", consumer_args(workers, max_idle, summary_path),
                            settings, log_path)
    try:
        _wait_for_assignment(consumer, log_path, settings.kafka_topic, timeout=120)
        producer = produce_all(settings, work, step, count, ["--rate", f"{rate:.3f}", "--limit", str(count)])
        try:
            code = consumer.wait(timeout=600)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{step}: the consumer did not stop within 600 s; see {log_path}") from None
        if code != 0:
            raise BenchError(f"{step}: the consumer exited with status {code}:\n{_tail(log_path)}")
    finally:
        if consumer.poll() is None:
            consumer.kill()  # our own child, by its handle
            consumer.wait()
    summary = _read_json(summary_path)
    check_consumed(settings, step, summary, count)
    summary["producer"] = producer
    return summary


def seed_design_run(base: Settings, names: RunNames, step: str, expected: int, max_idle: float, work: Path,
                    raw_prefix: str) -> dict:
    """bench/seed_design.py draining its own topic of `expected` events (see there)."""
    settings = names.settings(base, step, raw_prefix)
    kafka.ensure_topics(settings, [settings.kafka_topic, settings.kafka_dead_letter_topic])
    prepare_index(settings, embedder=False)  # the brief's design indexes no descriptors
    produce_all(settings, work, step, expected)
    summary_path = work / f"{step}.json"
    log_path = work / f"{step}.log"
    with open(log_path, "wb") as log:
        spawned_wall = time.time()
        code = subprocess.run([sys.executable, "-m", "bench.seed_design", "--max-idle-seconds", str(max_idle),
                               "--summary-json", str(summary_path)], env=child_env(settings), cwd=REPO_ROOT,
                              stdout=log, stderr=subprocess.STDOUT, timeout=1800).returncode
    if code != 0:
        raise BenchError(f"bench.seed_design exited with status {code}:\n{_tail(log_path)}")
    summary = _read_json(summary_path)
    if summary["processed"] + summary["failed"] != expected:
        raise BenchError(f"{step}: the seed design handled {summary['processed'] + summary['failed']} of "
                         f"{expected} events")
    # It never waits for its tasks: its last document is searchable when MeiliSearch says so.
    summary["from_start_seconds"] = last_task_finished(settings) - spawned_wall
    summary["from_start_images_per_second"] = expected / summary["from_start_seconds"]
    return summary


def last_task_finished(settings: Settings) -> float:
    """Unix time at which the last document task of the run's index finished (waited for)."""
    from datetime import timezone

    client = meili.client(settings, settings.meili_master_key)
    tasks = client.get_tasks({"indexUids": [settings.meili_index], "types": ["documentAdditionOrUpdate"],
                              "limit": 1}).results
    if not tasks:
        raise BenchError(f"no document task in index {settings.meili_index}")
    meili.wait_for_task(client, settings, tasks[0].uid, "the last document task", settings.meili_index)
    finished = client.get_task(tasks[0].uid).finished_at
    if finished is None:
        raise BenchError(f"task {tasks[0].uid} of index {settings.meili_index} has no finish time")
    return (finished if finished.tzinfo else finished.replace(tzinfo=timezone.utc)).timestamp()
