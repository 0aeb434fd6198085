"""Prometheus metrics of the pipeline's long-running scripts, served on 127.0.0.1 only.

Names follow Prometheus conventions (`imgpipe_<role>_<what>_<unit>`, `_total` for counters,
`_seconds` for durations); labels take few values (a stage, a service, a partition), never keys
or ids. Each script builds its metrics on a registry of its own, so tests can read them in
process, and serves them with prometheus-client's HTTP server when given a port.
"""
from __future__ import annotations

import logging

from imgpipe.deadletters import Stage
from imgpipe.errors import UserError

log = logging.getLogger(__name__)

# Seconds: 10 ms to 10 minutes, for both the per-image work and produce -> searchable.
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0,
                    60.0, 120.0, 300.0, 600.0)


def serve(registry, port: int, host: str = "127.0.0.1") -> None:
    """Serve `registry` at http://host:port/metrics in a daemon thread; a taken port is a user error."""
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise UserError(f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}); choose another "
                        "--metrics-port (METRICS_PORT)") from None
    log.info("metrics on http://%s:%d/metrics", host, port)


class ConsumerMetrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.messages = Counter("imgpipe_consumer_messages", "Messages consumed", registry=r)
        self.indexed = Counter("imgpipe_consumer_documents_indexed", "Documents indexed (task succeeded)",
                               registry=r)
        self.deleted = Counter("imgpipe_consumer_documents_deleted", "Documents deleted for delete events",
                               registry=r)
        self.dead_letters = Counter("imgpipe_consumer_dead_letters", "Messages dead-lettered, by stage", ["stage"],
                                    registry=r)
        self.retries = Counter("imgpipe_consumer_retries", "Retries of a failing service, by service", ["service"],
                               registry=r)
        self.batches = Counter("imgpipe_consumer_batches", "Batches committed", registry=r)
        self.processing = Histogram("imgpipe_consumer_processing_seconds",
                                    "Per image: fetch, process and store the derived images", registry=r,
                                    buckets=DURATION_BUCKETS)
        self.searchable = Histogram("imgpipe_consumer_produce_to_searchable_seconds",
                                    "Event time (producer) to index task succeeded", registry=r,
                                    buckets=DURATION_BUCKETS)
        self.lag = Gauge("imgpipe_consumer_lag_messages", "Messages behind the high watermark",
                         ["topic", "partition"], registry=r)
        self.in_flight = Gauge("imgpipe_consumer_images_in_flight", "Images being fetched, processed or stored",
                               registry=r)
        for stage in Stage:
            self.dead_letters.labels(stage)  # every stage shows, at 0, from the start
        for service in ("s3", "meilisearch", "kafka"):
            self.retries.labels(service)

    def retried(self, service: str) -> None:
        self.retries.labels(service if service in ("s3", "meilisearch", "kafka") else "other").inc()

    def set_lag(self, lag_by_partition: dict[tuple[str, int], int]) -> None:
        self.lag.clear()
        for (topic, partition), value in lag_by_partition.items():
            self.lag.labels(topic, str(partition)).set(value)


class ProducerMetrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter

        self.registry = CollectorRegistry()
        self.events = Counter("imgpipe_producer_events", "Events acknowledged by Kafka, by action", ["action"],
                              registry=self.registry)
        self.failures = Counter("imgpipe_producer_delivery_failures", "Events Kafka did not acknowledge",
                                registry=self.registry)
        for action in ("upsert", "delete"):
            self.events.labels(action)


class EnricherMetrics:
    """The enricher's (enricher/image_enricher.py): per lane (live, backfill) and per model."""

    LANES = ("live", "backfill")
    MODELS = ("faces", "text")

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.messages = Counter("imgpipe_enricher_messages", "Announcements consumed, by lane", ["lane"], registry=r)
        self.enriched = Counter("imgpipe_enricher_documents_enriched", "Documents given their enrichment (task "
                                "succeeded), by lane", ["lane"], registry=r)
        self.skipped = Counter("imgpipe_enricher_skipped", "Announcements not written, by reason (missing: "
                               "deleted; stale: a newer version is indexed; ...)", ["reason"], registry=r)
        self.dead_letters = Counter("imgpipe_enricher_dead_letters", "Announcements dead-lettered, by stage",
                                    ["stage"], registry=r)
        self.model_seconds = Histogram("imgpipe_enricher_model_cpu_seconds", "CPU seconds of a model on one image",
                                       ["model"], registry=r, buckets=DURATION_BUCKETS)
        self.enrichment_lag = Histogram("imgpipe_enricher_event_to_enriched_seconds",
                                        "Event time (producer) to enrichment task succeeded", registry=r,
                                        buckets=DURATION_BUCKETS)
        self.lag = Gauge("imgpipe_enricher_lag_messages", "Announcements behind the high watermark, by lane",
                         ["lane"], registry=r)
        self.last_lag_seconds = Gauge("imgpipe_enricher_last_enrichment_lag_seconds",
                                      "Event time to enrichment of the last document enriched", registry=r)
        for lane in self.LANES:
            self.messages.labels(lane)
            self.enriched.labels(lane)
        for stage in (Stage.VALIDATE, Stage.ENRICH_FETCH, Stage.GUARD, Stage.DECODE, Stage.BUDGET, Stage.FACES,
                      Stage.TEXT):  # enricher/deadletters.py's STAGES (imgpipe does not import enricher/)
            self.dead_letters.labels(stage.value)
