"""The consumer's, producer's and enricher's status from their Prometheus metrics (imgpipe/metrics.py names
them): totals, rates, lag per partition, in-flight images and latency histograms.

The text is parsed by prometheus-client's own parser. Rates need two scrapes: the tracker keeps
the last few minutes of samples per endpoint (bounded), and a rate is the counter's increase
since the oldest of them, so a page reloaded every few seconds shows rates over about a minute.
"""
from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field

RATE_WINDOW_SECONDS = 60.0
MAX_SAMPLES = 64  # per endpoint: the deque never grows past this
MAX_BYTES = 4 * 1024 * 1024
TIMEOUT_SECONDS = 2.0

# (sample name, label that tells the rows apart or None, what it counts)
COUNTERS = (
    ("imgpipe_consumer_messages_total", None, "messages consumed"),
    ("imgpipe_consumer_documents_indexed_total", None, "documents indexed"),
    ("imgpipe_consumer_documents_deleted_total", None, "documents deleted"),
    ("imgpipe_consumer_dead_letters_total", "stage", "dead letters"),
    ("imgpipe_consumer_retries_total", "service", "retries"),
    ("imgpipe_consumer_batches_total", None, "batches"),
    ("imgpipe_producer_events_total", "action", "events produced"),
    ("imgpipe_producer_delivery_failures_total", None, "delivery failures"),
    ("imgpipe_enricher_messages_total", "lane", "announcements consumed"),
    ("imgpipe_enricher_documents_enriched_total", "lane", "documents enriched"),
    ("imgpipe_enricher_skipped_total", "reason", "enrichments skipped"),
    ("imgpipe_enricher_dead_letters_total", "stage", "enricher dead letters"),
)
HISTOGRAMS = (
    ("imgpipe_consumer_processing_seconds", "processing per image (fetch, process, store)"),
    ("imgpipe_consumer_produce_to_searchable_seconds", "produce → searchable"),
    ("imgpipe_enricher_event_to_enriched_seconds", "event → enriched (enrichment lag)"),
)
LAG = "imgpipe_consumer_lag_messages"
IN_FLIGHT = "imgpipe_consumer_images_in_flight"
ENRICHER_LAG = "imgpipe_enricher_lag_messages"  # per lane (live, backfill), not per partition
ENRICHMENT_LAG = "imgpipe_enricher_last_enrichment_lag_seconds"


@dataclass
class Counter:
    what: str
    label: str  # "stage=fetch", or "" for an unlabelled counter
    total: float
    per_second: float | None


@dataclass
class Histogram:
    what: str
    count: float
    mean_seconds: float | None
    p50_seconds: float | None
    p95_seconds: float | None


@dataclass
class Endpoint:
    url: str
    error: str = ""  # why it could not be read
    counters: list[Counter] = field(default_factory=list)
    lag: list[tuple[str, str, float]] = field(default_factory=list)  # (topic, partition, messages)
    in_flight: float | None = None
    enrichment_lag_seconds: float | None = None  # event to enrichment, of the last document enriched
    histograms: list[Histogram] = field(default_factory=list)
    rate_seconds: float | None = None  # the window the rates cover

    @property
    def total_lag(self) -> float:
        return sum(lag for _, _, lag in self.lag)


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Exposition text -> {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus's histogram_quantile: linear inside the bucket holding rank q * count."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            inside = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / inside if inside else 0)
        lower_bound, lower_count = bound, count
    return lower_bound


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
        return response.read(MAX_BYTES).decode("utf-8", "replace")


class StatusTracker:
    def __init__(self):
        self._history: dict[str, deque] = {}
        self._lock = threading.Lock()

    def read(self, urls) -> list[Endpoint]:
        return [self.read_one(url) for url in urls]

    def read_one(self, url: str) -> Endpoint:
        try:
            samples = parse(fetch(url))
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            return Endpoint(url, error=f"cannot read {url}: {reason}")
        except ValueError as exc:  # not the exposition format
            return Endpoint(url, error=f"{url} did not answer with Prometheus metrics: {exc}")
        now = time.monotonic()
        with self._lock:
            history = self._history.setdefault(url, deque(maxlen=MAX_SAMPLES))
            while history and now - history[0][0] > RATE_WINDOW_SECONDS:
                history.popleft()
            before = history[0] if history else None
            history.append((now, samples))
        return summarise(url, samples, before, now)


def summarise(url: str, samples: dict, before: tuple[float, dict] | None, now: float) -> Endpoint:
    endpoint = Endpoint(url)
    elapsed = now - before[0] if before else 0.0
    if before and elapsed >= 1.0:
        endpoint.rate_seconds = elapsed
    for name, label, what in COUNTERS:
        for (sample, labels), value in sorted(samples.items()):
            if sample != name:
                continue
            shown = ", ".join(f"{k}={v}" for k, v in labels if k == label) if label else ""
            rate = None
            if endpoint.rate_seconds:
                old = before[1].get((sample, labels))
                if old is not None and value >= old:  # a restarted process starts from 0: no rate
                    rate = (value - old) / elapsed
            endpoint.counters.append(Counter(what, shown, value, rate))
    for (sample, labels), value in sorted(samples.items()):
        if sample == LAG:
            named = dict(labels)
            endpoint.lag.append((named.get("topic", ""), named.get("partition", ""), value))
        elif sample == ENRICHER_LAG:
            endpoint.lag.append((f"{dict(labels).get('lane', '')} lane", "", value))
        elif sample == IN_FLIGHT:
            endpoint.in_flight = value
        elif sample == ENRICHMENT_LAG:
            endpoint.enrichment_lag_seconds = value
    endpoint.lag.sort(key=lambda row: (row[0], int(row[1]) if row[1].isdigit() else 0, row[1]))
    for name, what in HISTOGRAMS:
        count = samples.get((f"{name}_count", ()))
        if count is None:
            continue
        total = samples.get((f"{name}_sum", ()), 0.0)
        buckets = [(float(dict(labels)["le"]), value) for (sample, labels), value in samples.items()
                   if sample == f"{name}_bucket" and "le" in dict(labels)]
        endpoint.histograms.append(Histogram(what, count, total / count if count else None,
                                             quantile(0.5, buckets), quantile(0.95, buckets)))
    return endpoint
