"""Test harness: the real local stack, started by the test session when it is not running.

Every integration test gets its own topic, consumer group, index and key prefix, so tests
never see each other's data and need no clean-up order.
"""
from __future__ import annotations

import uuid

import pytest

from imgpipe.settings import Settings


def pytest_configure(config) -> None:
    """Decoder limits first, as every script applies them before it decodes: the tests that
    process images in this process get the configured ceilings (and OpenCV its own, since
    cv2 is not loaded before test collection)."""
    from consumer.imageguard import apply_decoder_limits

    apply_decoder_limits(Settings().max_image_pixels)


@pytest.fixture(scope="session")
def stack() -> Settings:
    """Settings of a running local stack; starts each service that is not up, and stops at
    the end of the session exactly the services this session started."""
    from stack.lifecycle import ensure_running

    settings, started = ensure_running()
    yield settings
    for service in reversed(started):
        service.stop()


@pytest.fixture
def unique() -> str:
    """A short random suffix for names that must not collide between tests."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def settings(stack: Settings, unique: str) -> Settings:
    """Stack settings with a fresh topic, dead-letter topic, indexed topic, group, index and S3 prefixes, all
    deleted afterwards. The index is made as every set-up makes it (imgpipe/access.py, with the
    master key, less the embedder): the stack's consumer key may write to test_* indexes but not create or delete
    them; tests that need more administer with `admin(settings)` (tests/helpers.py)."""
    from imgpipe import access, kafka

    isolated = stack.with_overrides(
        kafka_topic=f"test-{unique}", kafka_dead_letter_topic=f"test-{unique}-dlq",
        kafka_indexed_topic=f"test-{unique}-indexed",
        kafka_consumer_group=f"test-group-{unique}", meili_index=f"test_{unique}",
        s3_raw_prefix=f"test-{unique}/raw/", s3_processed_prefix=f"test-{unique}/processed/",
        kafka_topic_partitions=3,
        # The enrichment stage's (the consumer announces to the indexed topic; enricher/ reads it).
        kafka_backfill_topic=f"test-{unique}-backfill",
        kafka_enricher_dead_letter_topic=f"test-{unique}-indexed-dlq", kafka_enricher_group=f"test-enricher-{unique}")
    topics = [isolated.kafka_topic, isolated.kafka_dead_letter_topic, isolated.kafka_indexed_topic]
    kafka.ensure_topics(isolated, topics)
    # Without the embedder: a test may add documents without descriptors; the consumer adds it.
    access.prepare_index(isolated, isolated.meili_master_key, isolated.meili_index, embedder=False)
    yield isolated
    from imgpipe import meili

    try:
        meili.delete_index(isolated, isolated.meili_index, key=isolated.meili_master_key)
    except Exception:  # the test may have stopped MeiliSearch
        pass
    try:
        kafka.delete_topics(isolated, topics + [isolated.kafka_backfill_topic,
                                                isolated.kafka_enricher_dead_letter_topic], timeout=15)
    except Exception:  # clean-up only: a broker restarted by the test may still be busy
        pass
    from imgpipe import s3

    try:  # the local S3 keeps its objects on disk: leave nothing behind
        s3.delete_prefix(s3.client(isolated), isolated.s3_bucket, f"test-{unique}/")
    except Exception:  # the test may have stopped the S3 server
        pass
