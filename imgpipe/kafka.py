"""Kafka: client configurations and factories, librdkafka's errors said in the pipeline's terms,
topics, and the reads several scripts share (a topic's messages between offsets).

Producers are idempotent with acks=all, and every producer of the project writes through
produce() (back-pressure when librdkafka's queue is full) or deliver() (until acknowledged).
Consumers never auto-commit (offsets are committed by hand, only after the index has the
documents); committed_lag() and restart_fetch() tell and mend a stalled fetch. librdkafka's own
log lines go through Python logging.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

from imgpipe.errors import DENIED, NOT_FOUND, REJECTED, UNAVAILABLE, ServiceError, UserError
from imgpipe.settings import Settings

log = logging.getLogger(__name__)
# librdkafka's own log lines (connection refused, ...) go through Python logging, not raw stderr.
_RDKAFKA_LOG = logging.getLogger("librdkafka")


class KafkaError(ServiceError):
    """A failed Kafka request: librdkafka's error `code` name (UNKNOWN_TOPIC_OR_PART, ...)."""

    def __init__(self, operation: str, target: str, code: str, message: str, kind: str,
                 summary: str | None = None):
        super().__init__("kafka", operation, target, code, message, kind, summary=summary)


_NOT_FOUND = {"UNKNOWN_TOPIC_OR_PART", "_UNKNOWN_TOPIC", "_UNKNOWN_PARTITION", "UNKNOWN_TOPIC_ID"}
_DENIED = {"TOPIC_AUTHORIZATION_FAILED", "GROUP_AUTHORIZATION_FAILED", "CLUSTER_AUTHORIZATION_FAILED",
           "SASL_AUTHENTICATION_FAILED", "_AUTHENTICATION", "TRANSACTIONAL_ID_AUTHORIZATION_FAILED"}
_REJECTED = {"MSG_SIZE_TOO_LARGE", "_MSG_SIZE_TOO_LARGE", "INVALID_TOPIC_EXCEPTION", "INVALID_PARTITIONS",
             "INVALID_REPLICATION_FACTOR", "INVALID_CONFIG", "POLICY_VIOLATION", "RECORD_LIST_TOO_LARGE",
             "INVALID_RECORD", "_INVALID_ARG", "_BAD_MSG", "CORRUPT_MESSAGE"}


def error_kind(name: str) -> str:
    """What a librdkafka error name means for the caller."""
    if name in _NOT_FOUND:
        return NOT_FOUND
    if name in _DENIED:
        return DENIED
    if name in _REJECTED:
        return REJECTED
    return UNAVAILABLE


def translate(exc: BaseException, operation: str, target: str = "") -> KafkaError:
    """A KafkaException (or a KafkaError object from a callback) as a KafkaError with context."""
    if isinstance(exc, KafkaError):
        return exc
    error = exc.args[0] if getattr(exc, "args", None) else exc
    name = error.name() if hasattr(error, "name") else type(exc).__name__
    text = error.str() if hasattr(error, "str") else str(exc)
    return KafkaError(operation, target, name, text, error_kind(name))


def base_config(settings: Settings) -> dict:
    config = {"bootstrap.servers": settings.kafka_bootstrap_servers}
    config.update(settings.kafka_client_config)
    return config


def producer_config(settings: Settings, **overrides) -> dict:
    config = base_config(settings)
    # librdkafka defaults to idempotence off: turn it on so broker retries cannot duplicate
    # or reorder events, and wait for all in-sync replicas.
    config.update({"enable.idempotence": True, "acks": "all", "linger.ms": 20,
                   "compression.type": "lz4", "logger": _RDKAFKA_LOG})
    config.update(overrides)
    return config


def consumer_config(settings: Settings, group_id: str | None = None, **overrides) -> dict:
    config = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        # A crashed member's partitions wait this long before moving to a live one (librdkafka's
        # default is 45 s). KAFKA_CLIENT_CONFIG may set another value.
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 2_000,
        "partition.assignment.strategy": "cooperative-sticky",
        "logger": _RDKAFKA_LOG,
    }
    config.update(settings.kafka_client_config)
    config.update({
        "group.id": group_id or settings.kafka_consumer_group,
        # librdkafka starts new groups at the latest offset; a backlog must not be skipped.
        "auto.offset.reset": "earliest",
        # Offsets are committed by hand, only after the index has the batch.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
    })
    config.update(overrides)
    return config


def producer(settings: Settings, **overrides):
    from confluent_kafka import Producer

    return Producer(producer_config(settings, **overrides))


def consumer(settings: Settings, group_id: str | None = None, **overrides):
    from confluent_kafka import Consumer

    return Consumer(consumer_config(settings, group_id, **overrides))


def admin(settings: Settings, **overrides):
    from confluent_kafka.admin import AdminClient

    return AdminClient({**base_config(settings), "logger": _RDKAFKA_LOG, **overrides})


def list_topics(settings: Settings, timeout: float = 10.0, topic: str | None = None, **overrides):
    """The cluster's metadata; KafkaError ("cannot reach ...") when no broker answers in time."""
    from confluent_kafka import KafkaException

    try:
        return admin(settings, **overrides).list_topics(topic=topic, timeout=timeout)
    except KafkaException as exc:
        error = translate(exc, "listing topics")
        raise KafkaError("listing topics", "", error.code, error.message, UNAVAILABLE,
                         summary=f"cannot reach {settings.kafka_bootstrap_servers} within {timeout:.0f} s "
                                 f"({error.message})") from None


def answers(settings: Settings) -> bool:
    """True when a broker answers a metadata request within 2 s (a health check)."""
    try:
        return bool(list_topics(settings, timeout=2, **{"socket.connection.setup.timeout.ms": 2000,
                                                        "log_level": 0}).brokers)
    except KafkaError:
        return False


def ensure_topics(settings: Settings, topics: list[str], partitions: int | None = None,
                  timeout: float = 30.0, config: dict[str, str] | None = None) -> None:
    """Create the topics that do not exist yet (idempotent), with these topic configs if given."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic

    client = admin(settings)
    existing = list_topics(settings, timeout=timeout).topics
    wanted = [NewTopic(t, num_partitions=partitions or settings.kafka_topic_partitions, replication_factor=-1,
                       config=dict(config or {}))
              for t in topics if t not in existing]
    if not wanted:
        return
    for topic, future in client.create_topics(wanted, operation_timeout=timeout).items():
        try:
            future.result()
            log.info("created topic %s", topic)
        except KafkaException as exc:
            error = translate(exc, "creating topic", topic)
            if error.code != "TOPIC_ALREADY_EXISTS":
                raise error from None


def ensure_partitions(settings: Settings, topic: str, count: int, timeout: float = 30.0) -> int | None:
    """Grow `topic` to `count` partitions, as `kafka-topics.sh --alter --partitions` does (Kafka never
    removes partitions; the new ones receive new events only). Returns the count it had when it
    grew, None when it had enough already."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewPartitions

    metadata = list_topics(settings, timeout=timeout, topic=topic).topics.get(topic)
    if metadata is None or metadata.error is not None:
        raise KafkaError("adding partitions to", topic, "UNKNOWN_TOPIC_OR_PART", "no such topic", NOT_FOUND)
    had = len(metadata.partitions)
    if had >= count:
        return None
    client = admin(settings)  # must outlive the futures below
    for name, future in client.create_partitions([NewPartitions(topic, count)], operation_timeout=timeout).items():
        try:
            future.result()
        except KafkaException as exc:
            raise translate(exc, "adding partitions to", name) from None
    log.info("topic %s: %d -> %d partitions", topic, had, count)
    return had


SCRAM_MECHANISM = "SCRAM-SHA-512"
# Kafka's own minimum for SCRAM-SHA-512 is 4096; twice that costs a client ~10 ms once per connection.
SCRAM_ITERATIONS = 8192


def ensure_scram_user(settings: Settings, username: str, password: str, timeout: float = 30.0) -> None:
    """Create (or reset) a SCRAM-SHA-512 user on the cluster, as `kafka-configs --alter --add-config
    SCRAM-SHA-512=[...]` does: idempotent, the password is never logged. Run over a listener that
    may alter credentials (the broker's loopback PLAINTEXT one, where no authorizer is set)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

    upsert = UserScramCredentialUpsertion(
        username, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS), password.encode())
    client = admin(settings)  # must outlive the futures below
    for user, future in client.alter_user_scram_credentials([upsert], request_timeout=timeout).items():
        try:
            future.result()
        except KafkaException as exc:
            raise translate(exc, "setting the SCRAM credentials of", user) from None


def sasl_client_config(username: str, password: str, tls: bool = False, ca_location: str | None = None) -> dict:
    """librdkafka options (KAFKA_CLIENT_CONFIG) for the SCRAM-SHA-512 listener: SASL_PLAINTEXT on
    the local stack's loopback, SASL_SSL with the set-up's CA on AWS."""
    config = {"security.protocol": "SASL_SSL" if tls else "SASL_PLAINTEXT", "sasl.mechanisms": SCRAM_MECHANISM,
              "sasl.username": username, "sasl.password": password}
    if tls and ca_location:
        config["ssl.ca.location"] = ca_location
    return config


def set_topic_config(settings: Settings, topic: str, configs: dict[str, str], timeout: float = 30.0) -> None:
    """Set topic-level configs (e.g. retention.ms, max.message.bytes) of an existing topic."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    entries = [ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET) for name, value in configs.items()]
    client = admin(settings)  # must outlive the futures below
    for future in client.incremental_alter_configs([ConfigResource("topic", topic, incremental_configs=entries)]).values():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            raise translate(exc, "configuring topic", topic) from None


def check_topic(settings: Settings, topic: str, timeout: float = 10.0) -> None:
    """Fail fast, with one clear line, when the broker is unreachable or the topic is missing,
    instead of letting librdkafka queue messages for minutes."""
    metadata = list_topics(settings, timeout=timeout, topic=topic)
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        raise UserError(f"Kafka topic {topic!r} does not exist on {settings.kafka_bootstrap_servers} "
                        "(`make up` creates it locally; on a real cluster create it or set KAFKA_TOPIC)")


def delete_topics(settings: Settings, topics: Iterable[str], timeout: float = 30.0) -> list[str]:
    """Delete those of `topics` that exist; returns the ones deleted."""
    from confluent_kafka import KafkaException

    client = admin(settings)  # must outlive the futures below
    existing = client.list_topics(timeout=timeout).topics
    doomed = sorted(t for t in set(topics) if t in existing)
    if not doomed:
        return []
    for topic, future in client.delete_topics(doomed, operation_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            raise translate(exc, "deleting topic", topic) from None
    return doomed


@dataclass(frozen=True)
class Outgoing:
    """One message to write: key, value, headers (a list of (name, bytes))."""

    key: bytes | None
    value: bytes | None
    headers: list | None = None


def produce(producer_client, topic: str, key: bytes | None = None, value: bytes | None = None,
            headers: list | None = None, on_delivery=None, wait: float = 0.5) -> None:
    """Queue one message. When librdkafka's local queue is full (BufferError) the delivery
    reports are served for up to `wait` seconds, then it is tried again: back-pressure, not loss."""
    extra = {"headers": headers} if headers else {}
    while True:
        try:
            producer_client.produce(topic, key=key, value=value, on_delivery=on_delivery, **extra)
            return
        except BufferError:
            producer_client.poll(wait)


def deliver(producer_client, topic: str, messages: list[Outgoing], stop, refused=None) -> int:
    """Write `messages` to `topic` and return once the broker acknowledged each of them; returns how
    many were written. librdkafka retries on its own until message.timeout.ms; what it finally
    gives up on is produced again after a back-off (a broker outage is retried until it recovers
    or `stop` is set: imgpipe.retry.Stopped). A message refused for its content (too large, say)
    goes to `refused(message, error_name)`, which returns what to write instead, or None for
    nothing; without `refused`, such a message is retried like an outage."""
    from confluent_kafka import KafkaException

    from imgpipe.errors import InfrastructureError
    from imgpipe.retry import retry_until_stopped

    failed: list[tuple[Outgoing, str]] = []
    dropped = 0

    def send(message: Outgoing) -> None:
        def on_delivery(err, _msg) -> None:
            if err is not None:
                failed.append((message, err.name()))

        try:
            produce(producer_client, topic, message.key, message.value, message.headers, on_delivery)
        except KafkaException as exc:  # refused before it left (too large, bad argument)
            error = translate(exc, "writing to", topic)
            if error.kind != REJECTED:
                raise error from None
            failed.append((message, error.code))

    def wait_for_acks() -> None:
        nonlocal dropped
        while True:
            remaining = producer_client.flush(10)
            batch, failed[:] = list(failed), []
            again = []
            for message, name in batch:
                if refused is not None and error_kind(name) == REJECTED:
                    replacement = refused(message, name)
                    if replacement is None:
                        dropped += 1
                    else:
                        send(replacement)
                else:
                    again.append(message)
            for message in again:
                send(message)
            if not batch and not remaining:
                return
            if again or remaining:
                raise InfrastructureError("kafka", f"write to {topic} not acknowledged yet "
                                                   f"({remaining + len(again)} pending)")

    for message in messages:
        send(message)
    retry_until_stopped(wait_for_acks, stop)
    return len(messages) - dropped


def without_errors(messages) -> list:
    """The messages of a poll that carry data; what Kafka reported instead (a partition at its end,
    a broker gone) is logged, never handled as an event."""
    usable = []
    for msg in messages:
        if msg.error() is None:
            usable.append(msg)
        else:
            log.warning("Kafka reported: %s", msg.error())
    return usable


def poll_batch(consumer_client, max_messages: int, timeout: float) -> list:
    """Up to `max_messages` usable messages: waits up to `timeout` for the first, then takes what
    is already fetched without waiting. consume(n, timeout) alone returns only once it has n
    messages or the timeout passed, so on a trickle every message would wait the whole timeout."""
    first = consumer_client.poll(timeout)
    if first is None:
        return []
    rest = consumer_client.consume(max_messages - 1, timeout=0) if max_messages > 1 else []
    return without_errors([first, *rest])


def commit(consumer_client, next_offsets: dict[tuple[str, int], int]) -> None:
    """Commit synchronously, for each (topic, partition), the offset of the next message to read."""
    from confluent_kafka import KafkaException, TopicPartition

    offsets = [TopicPartition(topic, partition, offset) for (topic, partition), offset in next_offsets.items()]
    try:
        consumer_client.commit(offsets=offsets, asynchronous=False)
    except KafkaException as exc:
        raise translate(exc, "committing offsets") from None


def cached_lag(consumer_client) -> dict[tuple[str, int], int] | None:
    """(topic, partition) -> messages between the consumer's position and the high watermark, for
    the assigned partitions; None when it cannot be told. The high watermark is the cached one,
    which comes with every fetch: asking the broker costs a request per partition."""
    try:
        assignment = consumer_client.assignment()
        lag = {}
        for tp in consumer_client.position(assignment) if assignment else []:
            low, high = consumer_client.get_watermark_offsets(tp, cached=True)
            position = tp.offset if tp.offset >= 0 else low
            lag[(tp.topic, tp.partition)] = max(high - position, 0)
        return lag
    except Exception:  # lag is informative only
        return None


def committed_lag(consumer_client, timeout: float = 10.0) -> dict[tuple[str, int], int] | None:
    """(topic, partition) -> messages between the group's committed offset and the high watermark
    (asked of the broker), for the assigned partitions: 0 everywhere means all is committed.
    None when the broker cannot tell now."""
    from confluent_kafka import KafkaException

    try:
        assignment = consumer_client.assignment()
        lag = {}
        for tp in consumer_client.committed(assignment, timeout=timeout) if assignment else []:
            low, high = consumer_client.get_watermark_offsets(tp, timeout=timeout, cached=False)
            done = tp.offset if tp.offset >= 0 else low
            lag[(tp.topic, tp.partition)] = max(high - max(done, low), 0)
        return lag
    except KafkaException as exc:
        log.info("lag unknown: %s", translate(exc, "reading committed offsets"))
        return None


def restart_fetch(consumer_client, topics: list[str], behind: Iterable[tuple[str, int]], hard: bool = False,
                  **callbacks) -> None:
    """Start the fetch of the partitions `behind` (assigned, with lag, quiet) again, from their
    committed offsets.

    A partition whose fetcher never started (its position unknown) was left waiting for its
    committed offset: after a broker restart the OffsetFetch can meet a stale group coordinator,
    which answers NOT_COORDINATOR for the whole request, and librdkafka (2.16) neither retries
    it nor starts the fetcher (confluentinc/librdkafka#5586). Only a new assignment asks again:
    leave the group and subscribe again (also when `hard`, or when a seek is refused). A
    partition that fetched before and went quiet is resumed and moved back to its committed offset
    by a seek, which restarts its fetcher whatever state it was stuck in."""
    from confluent_kafka import KafkaException, TopicPartition

    try:
        stalled = [TopicPartition(topic, partition) for topic, partition in behind]
        if stalled:
            consumer_client.resume(stalled)  # the pipeline never pauses: a paused partition is stalled too
        never_started = any(tp.offset < 0 for tp in consumer_client.position(stalled)) if stalled else False
        if not hard and not never_started:
            for tp in consumer_client.committed(stalled, timeout=10) if stalled else []:
                low, _ = consumer_client.get_watermark_offsets(tp, timeout=10, cached=False)
                consumer_client.seek(TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else low))
            return
    except KafkaException as exc:
        log.warning("seek refused (%s); subscribing again", translate(exc, "seeking"))
    consumer_client.unsubscribe()
    consumer_client.subscribe(topics, **callbacks)


def end_offsets(settings: Settings, topic: str, timeout: float = 10.0) -> dict[int, int]:
    """partition -> high watermark (the offset the next message will get)."""
    from confluent_kafka import KafkaException, TopicPartition

    reader = consumer(settings, group_id="imgpipe-offsets-reader")
    try:
        metadata = reader.list_topics(topic, timeout=timeout).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise KafkaError("reading offsets of", topic, "UNKNOWN_TOPIC_OR_PART", "no such topic", NOT_FOUND)
        return {p: reader.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
                for p in metadata.partitions}
    except KafkaException as exc:
        raise translate(exc, "reading offsets of", topic) from None
    finally:
        reader.close()


def watermarks(settings: Settings, topic: str, timeout: float = 10.0) -> dict[int, tuple[int, int]]:
    """partition -> (low, high): the first offset still retained and the offset the next message gets."""
    from confluent_kafka import KafkaException, TopicPartition

    reader = consumer(settings, group_id="imgpipe-offsets-reader")
    try:
        metadata = reader.list_topics(topic, timeout=timeout).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise KafkaError("reading offsets of", topic, "UNKNOWN_TOPIC_OR_PART", "no such topic", NOT_FOUND)
        return {p: reader.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout) for p in metadata.partitions}
    except KafkaException as exc:
        raise translate(exc, "reading offsets of", topic) from None
    finally:
        reader.close()


def read_latest(settings: Settings, topic: str, count: int, timeout: float = 10.0) -> list:
    """The last `count` messages of `topic`, newest first (by message timestamp): at most `count`
    from the end of each partition are read, whatever the topic holds. A topic that holds some of
    which none arrived within `timeout` is a KafkaError (UNAVAILABLE), never an empty answer."""
    ends = watermarks(settings, topic, timeout)
    start = {p: max(low, high - count) for p, (low, high) in ends.items()}
    messages = read_messages(settings, topic, start, {p: high for p, (_, high) in ends.items()}, timeout)
    expected = sum(high - start[p] for p, (_, high) in ends.items())
    if expected and not messages:
        raise KafkaError("reading", topic, "_TIMED_OUT", f"none of its latest {expected} message(s) arrived "
                         f"within {timeout:.0f} s", UNAVAILABLE)
    messages.sort(key=lambda m: (m.timestamp()[1], m.partition(), m.offset()), reverse=True)
    return messages[:count]


def iter_messages(settings: Settings, topic: str, start: dict[int, int] | None = None,
                  end: dict[int, int] | None = None, timeout: float = 30.0) -> Iterator:
    """The messages of `topic` from `start` (default: the beginning) up to `end` (default: the high
    watermarks now), each partition in offset order. Stops when `timeout` seconds pass without a
    message while some are still expected (a compacted or truncated partition)."""
    from confluent_kafka import KafkaException, TopicPartition

    start = start or {}
    end = end if end is not None else end_offsets(settings, topic)
    wanted = {p: (start.get(p, 0), high) for p, high in end.items() if high > start.get(p, 0)}
    if not wanted:
        return
    reader = consumer(settings, group_id="imgpipe-topic-reader")
    try:
        reader.assign([TopicPartition(topic, p, low) for p, (low, _) in wanted.items()])
        remaining = {p: high for p, (_, high) in wanted.items()}
        quiet_since = time.monotonic()
        while remaining and time.monotonic() - quiet_since < timeout:
            msg = reader.poll(0.5)
            if msg is None or msg.error():
                continue
            quiet_since = time.monotonic()
            partition = msg.partition()
            if partition in remaining and msg.offset() < remaining[partition]:
                yield msg
            if partition in remaining and msg.offset() + 1 >= remaining[partition]:
                del remaining[partition]
    except KafkaException as exc:
        raise translate(exc, "reading", topic) from None
    finally:
        reader.close()


def read_messages(settings: Settings, topic: str, start: dict[int, int] | None = None,
                  end: dict[int, int] | None = None, timeout: float = 30.0) -> list:
    """iter_messages as a list."""
    return list(iter_messages(settings, topic, start, end, timeout))


def read_one(settings: Settings, topic: str, partition: int, offset: int, timeout: float = 10.0):
    """The message at topic[partition]@offset, or None when it is gone (retention) or never was."""
    for msg in iter_messages(settings, topic, {partition: offset}, {partition: offset + 1}, timeout):
        return msg if msg.offset() == offset else None
    return None


def committed_offsets(settings: Settings, topic: str, group_id: str | None = None,
                      timeout: float = 10.0) -> dict[int, int]:
    """partition -> committed offset of the group (-1001 when nothing is committed)."""
    from confluent_kafka import KafkaException, TopicPartition

    reader = consumer(settings, group_id=group_id)
    try:
        partitions = reader.list_topics(topic, timeout=timeout).topics[topic].partitions
        committed = reader.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout)
        return {tp.partition: tp.offset for tp in committed}
    except KafkaException as exc:
        raise translate(exc, "reading committed offsets of", topic) from None
    finally:
        reader.close()
