"""The enricher's dead letters: the one place that picks the writer, so the merge with issue 22's
dead-letter contract (imgpipe/deadletters.py, a Stage enum) repoints only this.

Stages: "validate" (a bad announcement), "enrich-fetch" (an image it names cannot be read),
"guard"/"decode"/"budget" (as the consumer's), "faces" and "text" (a model failed on it).
"""
from __future__ import annotations

import threading

from imgpipe.settings import Settings

STAGES = ("validate", "enrich-fetch", "guard", "decode", "budget", "faces", "text")


def writer(settings: Settings, stop: threading.Event):
    """A DeadLetterWriter to KAFKA_ENRICHER_DEAD_LETTER_TOPIC."""
    from consumer.deadletter import DeadLetterWriter

    return DeadLetterWriter(settings.with_overrides(kafka_dead_letter_topic=settings.kafka_enricher_dead_letter_topic),
                            stop)
