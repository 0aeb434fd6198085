"""What the consumer counts while it runs: messages, documents, dead letters by stage, latency,
the busy span and its CPU, and the process's peak memory. Reported in the status line and
the summary; nothing here changes what the loop does."""
from __future__ import annotations

import math
import resource
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime


class LatencyHistogram:
    """Quantiles of durations in bounded memory, however long the consumer runs: counts in
    logarithmic buckets 2% wide (at most ~1,000 of them, from 1 ms to a day), so a quantile is
    within 2% of the exact one."""

    RATIO = 1.02
    FLOOR = 0.001

    def __init__(self):
        self.counts: Counter = Counter()
        self.total = 0

    def add(self, seconds: float) -> None:
        bucket = 0 if seconds <= self.FLOOR else min(1000, math.ceil(math.log(seconds / self.FLOOR, self.RATIO)))
        self.counts[bucket] += 1
        self.total += 1

    def quantile(self, q: float) -> float | None:
        if not self.total:
            return None
        rank = max(1, math.ceil(q * self.total))
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return round(self.FLOOR * self.RATIO ** bucket, 4)
        raise AssertionError("unreachable: the counts add up to the total")


@dataclass
class Stats:
    consumed: int = 0
    indexed: int = 0
    deleted: int = 0  # documents removed for delete events
    superseded: int = 0  # events replaced by a later event of the same object before they were sent
    dead_lettered: int = 0
    batches: int = 0
    dead_letter_reasons: Counter = field(default_factory=Counter)
    latencies: LatencyHistogram = field(default_factory=LatencyHistogram)  # event_time -> searchable
    started: float = field(default_factory=time.monotonic)
    lag: int | None = None
    # Monotonic times of the first message and of the last batch committed: the busy span,
    # without start-up (index, topics, group join) or the idle tail before --max-idle-seconds.
    first_message_at: float | None = None
    last_committed_at: float | None = None
    # Monotonic time the first image came back from the pools (fetched, processed and its derived
    # images written, or dead-lettered there): the end of start-up as a user sees it, worker
    # start included (bench's consumer_startup).
    first_processed_at: float | None = None
    # CPU seconds of the whole process (all threads) at those two moments.
    first_message_cpu: float | None = None
    last_committed_cpu: float | None = None
    worker_peak_rss_mb: float = 0.0  # the largest peak of any processing worker
    worker_cpu_seconds: float = 0.0  # CPU the processing workers spent on images (process_image)
    dead_letters_minimal: int = 0  # written without the original key and value (the broker refused them)
    dead_letters_refused: int = 0  # not written at all (logged with the original's position)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    @property
    def finished(self) -> int:
        """Messages done with: indexed, deleted, superseded or dead-lettered."""
        return self.indexed + self.deleted + self.superseded + self.dead_lettered

    def rate(self) -> float:
        return self.finished / self.seconds if self.seconds > 0 else 0.0

    @property
    def active_seconds(self) -> float | None:
        if self.first_message_at is None or self.last_committed_at is None:
            return None
        return self.last_committed_at - self.first_message_at

    def active_rate(self) -> float | None:
        """Images per second from the first message to the last commit (what bench/ measures)."""
        busy = self.active_seconds
        return self.finished / busy if busy else None

    def message_polled(self) -> None:
        if self.first_message_at is None:
            self.first_message_at = time.monotonic()
            self.first_message_cpu = time.process_time()
        self.consumed += 1

    def image_finished(self) -> None:
        if self.first_processed_at is None:
            self.first_processed_at = time.monotonic()

    def batch_confirmed(self, documents: list[dict], dead_lettered: int, deleted: int = 0) -> list[float]:
        """Count a batch MeiliSearch confirmed; returns the produce -> searchable latency of its
        documents."""
        now = time.time()
        latencies = []
        for doc in documents:
            latency = seconds_since(doc.get("event_time", ""), now)
            if latency is not None:
                self.latencies.add(latency)
                latencies.append(latency)
        self.indexed += len(documents)
        self.deleted += deleted
        self.dead_lettered += dead_lettered
        self.batches += 1
        self.last_committed_at = time.monotonic()
        self.last_committed_cpu = time.process_time()
        return latencies

    def latency(self, quantile: float) -> float | None:
        return self.latencies.quantile(quantile)

    def line(self) -> str:
        lag = "?" if self.lag is None else str(self.lag)
        return (f"consumed {self.consumed}, indexed {self.indexed}, dead-lettered {self.dead_lettered}, "
                f"deleted {self.deleted}, "
                f"{self.rate():.1f} images/s, lag {lag}")

    def as_dict(self) -> dict:
        return {"consumed": self.consumed, "indexed": self.indexed, "deleted": self.deleted,
                "superseded": self.superseded, "dead_lettered": self.dead_lettered,
                "dead_letter_reasons": dict(self.dead_letter_reasons), "batches": self.batches,
                "seconds": round(self.seconds, 3), "images_per_second": round(self.rate(), 2),
                "active_seconds": _rounded(self.active_seconds, 3),
                "active_images_per_second": _rounded(self.active_rate(), 2),
                "active_cpu_seconds": (None if self.first_message_cpu is None or self.last_committed_cpu is None
                                       else round(self.last_committed_cpu - self.first_message_cpu, 3)),
                "latency_p50_s": self.latency(0.5), "latency_p95_s": self.latency(0.95),
                "peak_rss_mb": round(peak_rss_mb(), 1), "worker_peak_rss_mb": round(self.worker_peak_rss_mb, 1),
                "worker_cpu_seconds": round(self.worker_cpu_seconds, 3),
                # CLOCK_MONOTONIC is the machine's: another process can place the busy span in time.
                "first_message_monotonic": self.first_message_at, "first_processed_monotonic": self.first_processed_at,
                "last_committed_monotonic": self.last_committed_at,
                "dead_letters_minimal": self.dead_letters_minimal, "dead_letters_refused": self.dead_letters_refused}


def peak_rss_mb() -> float:
    """This process's peak resident memory. On Linux from VmHWM: ru_maxrss also counts the
    memory of the process that started us (fork/vfork + exec keeps its high-water mark), so a
    consumer launched by a big parent would report the parent's peak as its own."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def seconds_since(iso_time: str, now: float) -> float | None:
    try:
        return now - datetime.fromisoformat(iso_time.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        return None
