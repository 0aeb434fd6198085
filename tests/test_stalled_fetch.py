"""A fetch that stalls with lag left is seen and restarted (imgpipe.kafka.committed_lag,
restart_fetch), against the real broker: a paused partition stands in for a stalled fetcher."""
from __future__ import annotations

import time

import pytest

from imgpipe import kafka

pytestmark = pytest.mark.integration


def consume_until(consumer, count: int, timeout: float = 60) -> list:
    got, deadline = [], time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += [m for m in consumer.consume(num_messages=count - len(got), timeout=0.5) if m.error() is None]
    return got


def commit(consumer, messages) -> None:
    offsets = {}
    for m in messages:
        offsets[(m.topic(), m.partition())] = max(offsets.get((m.topic(), m.partition()), 0), m.offset() + 1)
    kafka.commit(consumer, offsets)


@pytest.mark.parametrize("hard", [False, True], ids=["seek", "subscribe-again"])
def test_a_stalled_fetch_with_lag_is_seen_and_restarted_until_everything_is_committed(settings, hard):
    producer = kafka.producer(settings)
    for i in range(30):
        kafka.produce(producer, settings.kafka_topic, f"k{i}".encode(), b"v")
    assert producer.flush(30) == 0
    consumer = kafka.consumer(settings)
    try:
        consumer.subscribe([settings.kafka_topic])
        first = consume_until(consumer, 5)
        assert len(first) == 5
        commit(consumer, first)
        consumer.pause(consumer.assignment())  # nothing more is fetched: a stall
        assert consume_until(consumer, 1, timeout=3) == []
        lag = kafka.committed_lag(consumer)
        assert sum(lag.values()) == 25

        kafka.restart_fetch(consumer, [settings.kafka_topic], [tp for tp, n in lag.items() if n], hard=hard)
        rest = consume_until(consumer, 25)  # from the committed offsets: nothing skipped
        assert len({(m.partition(), m.offset()) for m in first + rest}) == 30
        commit(consumer, rest)
        assert kafka.committed_lag(consumer) == {(settings.kafka_topic, p): 0 for p in range(3)}
    finally:
        consumer.close()
