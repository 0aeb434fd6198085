"""The enricher's dead letters: written through the one dead-letter contract
(imgpipe/deadletters.py) to KAFKA_ENRICHER_DEAD_LETTER_TOPIC, so `redrive.py --enricher` reads them
as it reads the consumer's.

Stages: "validate" (a bad announcement), "enrich-fetch" (an image it names cannot be read),
"guard"/"decode"/"budget" (as the consumer's), "faces" and "text" (a model failed on it).
"""
from __future__ import annotations

import threading

from imgpipe.deadletters import DeadLetterWriter, Stage
from imgpipe.settings import Settings

STAGES = (Stage.VALIDATE, Stage.ENRICH_FETCH, Stage.GUARD, Stage.DECODE, Stage.BUDGET, Stage.FACES, Stage.TEXT)


def writer(settings: Settings, stop: threading.Event) -> DeadLetterWriter:
    """A DeadLetterWriter to KAFKA_ENRICHER_DEAD_LETTER_TOPIC."""
    return DeadLetterWriter(settings.with_overrides(kafka_dead_letter_topic=settings.kafka_enricher_dead_letter_topic),
                            stop)
