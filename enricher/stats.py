"""What the enricher counts: announcements, documents enriched, skipped (and why), dead letters,
the models' CPU, and the lag from the image's event to its enrichment."""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from consumer.stats import LatencyHistogram


@dataclass
class EnricherStats:
    consumed: int = 0
    enriched: int = 0
    with_faces: int = 0
    with_text: int = 0
    deletions: int = 0  # announcements of deletions: nothing to enrich
    skipped: Counter = field(default_factory=Counter)  # missing, stale, undone, crossed, superseded
    dead_lettered: int = 0
    dead_letter_reasons: Counter = field(default_factory=Counter)
    model_cpu_seconds: Counter = field(default_factory=Counter)
    model_images: Counter = field(default_factory=Counter)
    worker_cpu_seconds: float = 0.0
    lag: dict = field(default_factory=dict)  # lane -> messages behind
    enrichment_lag: LatencyHistogram = field(default_factory=LatencyHistogram)  # event_time -> enriched
    started: float = field(default_factory=time.monotonic)
    first_message_at: float | None = None
    last_committed_at: float | None = None

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    @property
    def finished(self) -> int:
        return self.enriched + self.deletions + sum(self.skipped.values()) + self.dead_lettered

    def rate(self) -> float:
        return self.finished / self.seconds if self.seconds > 0 else 0.0

    def active_rate(self) -> float | None:
        if self.first_message_at is None or self.last_committed_at is None:
            return None
        busy = self.last_committed_at - self.first_message_at
        return self.finished / busy if busy > 0 else None

    def line(self) -> str:
        lag = ", ".join(f"{lane} {n}" for lane, n in sorted(self.lag.items())) or "?"
        return (f"consumed {self.consumed}, enriched {self.enriched} ({self.with_faces} with faces, "
                f"{self.with_text} with text), skipped {sum(self.skipped.values())}, "
                f"dead-lettered {self.dead_lettered}, {self.rate():.1f} images/s, lag {lag}")

    def as_dict(self) -> dict:
        return {"consumed": self.consumed, "enriched": self.enriched, "with_faces": self.with_faces,
                "with_text": self.with_text, "deletions": self.deletions, "skipped": dict(self.skipped),
                "dead_lettered": self.dead_lettered, "dead_letter_reasons": dict(self.dead_letter_reasons),
                "seconds": round(self.seconds, 3), "images_per_second": round(self.rate(), 2),
                "active_images_per_second": None if self.active_rate() is None else round(self.active_rate(), 2),
                "model_cpu_ms_per_image": {m: round(1000 * s / self.model_images[m], 1)
                                           for m, s in self.model_cpu_seconds.items() if self.model_images[m]},
                "worker_cpu_seconds": round(self.worker_cpu_seconds, 3),
                "enrichment_lag_p50_s": self.enrichment_lag.quantile(0.5),
                "enrichment_lag_p95_s": self.enrichment_lag.quantile(0.95)}
