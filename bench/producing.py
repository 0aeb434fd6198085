"""`producer`: the producer's EventSender against a bare confluent-kafka produce loop.

Both send the same messages (key = object key, value = the event JSON) to a fresh topic each
and are timed from the first produce to the end of flush(), i.e. until the broker has them all,
after one warm-up message each (connection, metadata and producer id are set-up, not throughput).
The floor is librdkafka's defaults with pre-encoded values; the sender adds idempotence,
acks=all, lz4, a delivery callback per message and the JSON encoding of each event.
"""
from __future__ import annotations

import time

from imgpipe import kafka
from imgpipe.events import ImageEvent, utc_now_iso
from imgpipe.settings import Settings

from bench.figures import Figure


def sample_events(count: int, bucket: str) -> list[ImageEvent]:
    now = utc_now_iso()
    return [ImageEvent(bucket=bucket, key=f"raw/2026/11/{i // 1000:04d}/img_{i:07d}.jpg", size=150_000 + i,
                       etag=f"{i:032x}", last_modified="2026-11-25T16:40:31.123Z", event_time=now)
            for i in range(count)]


def _warm_up(producer, topic: str, message: tuple[bytes, bytes]) -> None:
    """One message and a flush before the clock starts: connections, metadata and (with
    idempotence) the producer id are set-up costs, not throughput."""
    producer.produce(topic, key=message[0], value=message[1])
    if producer.flush(30):
        raise RuntimeError(f"cannot produce to {topic}")


def bare_produce(config: dict, topic: str, messages: list[tuple[bytes, bytes]],
                 events: list[ImageEvent] | None = None) -> float:
    """Seconds to produce and flush `messages` with a plain Producer and `config`: the floor.
    With `events`, each value is encoded from its event inside the loop instead."""
    # A plain librdkafka producer with just `config` is what the floor is, so it is built here
    # rather than by imgpipe.kafka.producer (which adds the pipeline's own settings).
    from confluent_kafka import Producer

    producer = Producer(config)
    _warm_up(producer, topic, messages[0])
    started = time.perf_counter()
    for i, (key, value) in enumerate(messages):
        if events is not None:
            value = events[i].to_json()
        kafka.produce(producer, topic, key, value, wait=0.1)
        producer.poll(0)
    remaining = producer.flush(120)
    seconds = time.perf_counter() - started
    if remaining:
        raise RuntimeError(f"bare producer: {remaining} message(s) not delivered")
    return seconds


def sender_produce(settings: Settings, topic: str, events: list[ImageEvent]) -> float:
    """Seconds for producer.sender.EventSender to send and flush `events`."""
    from producer.sender import EventSender

    sender = EventSender(settings.with_overrides(kafka_topic=topic))
    sender.send(events[0])  # warm-up, as for the bare loop
    sender.flush(timeout=30)
    started = time.perf_counter()
    for event in events:
        sender.send(event)
    remaining = sender.flush(timeout=120)
    seconds = time.perf_counter() - started
    if remaining or sender.report.sent != len(events) + 1:
        raise RuntimeError(f"EventSender: {sender.report.sent - 1} of {len(events)} delivered "
                           f"({sender.report.errors[:3]})")
    return seconds


def producer_figure(settings: Settings, count: int, topic_prefix: str, rounds: int = 2) -> Figure:
    """EventSender against the bare loop (topics `topic_prefix`-bare and -sender). Rounds
    alternate the loops, best of each. Two more loops say where the difference goes: the
    producer's configuration alone, and encoding each event to JSON alone."""
    events = sample_events(count, settings.s3_bucket)
    messages = [(e.key.encode("utf-8"), e.to_json()) for e in events]
    topics = [f"{topic_prefix}-bare", f"{topic_prefix}-sender"]
    kafka.ensure_topics(settings, topics)
    loops = {
        "bare": lambda: bare_produce(kafka.base_config(settings), topics[0], messages),
        "bare + producer config": lambda: bare_produce(kafka.producer_config(settings), topics[0], messages),
        "bare + JSON encoding": lambda: bare_produce(kafka.base_config(settings), topics[0], messages, events),
        "EventSender": lambda: sender_produce(settings, topics[1], events),
    }
    best = {name: float("inf") for name in loops}
    for _ in range(max(1, rounds)):
        for name, loop in loops.items():
            best[name] = min(best[name], loop())
    figure = Figure("producer", count / best["EventSender"], "messages/s", floor=count / best["bare"],
                    floor_name="bare produce loop",
                    detail={"messages": count, "rounds": rounds, "value_bytes": len(messages[0][1]),
                            "messages_per_second": {name: round(count / seconds) for name, seconds in best.items()},
                            "producer_config": {k: v for k, v in kafka.producer_config(settings).items()
                                                if k != "bootstrap.servers" and k not in settings.kafka_client_config
                                                and isinstance(v, (str, int, float, bool))},
                            "partitions": settings.kafka_topic_partitions})
    return figure
