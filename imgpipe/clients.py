"""Client factories: the one place that knows how to reach Kafka, S3 and MeiliSearch."""
from __future__ import annotations

import logging

from imgpipe.errors import InfrastructureError, UserError
from imgpipe.settings import Settings

log = logging.getLogger(__name__)
# librdkafka's own log lines (connection refused, ...) go through Python logging, not raw stderr.
_RDKAFKA_LOG = logging.getLogger("librdkafka")


def kafka_base_config(settings: Settings) -> dict:
    config = {"bootstrap.servers": settings.kafka_bootstrap_servers}
    config.update(settings.kafka_client_config)
    return config


def producer_config(settings: Settings, **overrides) -> dict:
    config = kafka_base_config(settings)
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


def ensure_topics(settings: Settings, topics: list[str], partitions: int | None = None,
                  timeout: float = 30.0) -> None:
    """Create the topics that do not exist yet (idempotent)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(kafka_base_config(settings))
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise InfrastructureError("kafka", f"cannot reach {settings.kafka_bootstrap_servers}: {exc}") from None
    wanted = [NewTopic(t, num_partitions=partitions or settings.kafka_topic_partitions, replication_factor=-1)
              for t in topics if t not in existing]
    if not wanted:
        return
    for topic, future in admin.create_topics(wanted, operation_timeout=timeout).items():
        try:
            future.result()
            log.info("created topic %s", topic)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise InfrastructureError("kafka", f"cannot create topic {topic}: {exc}") from None


def check_topic(settings: Settings, topic: str, timeout: float = 10.0) -> None:
    """Fail fast, with one clear line, when the broker is unreachable or the topic is missing,
    instead of letting librdkafka queue messages for minutes."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({**kafka_base_config(settings), "logger": _RDKAFKA_LOG})
    try:
        metadata = admin.list_topics(topic=topic, timeout=timeout)
    except KafkaException as exc:
        raise InfrastructureError("kafka", f"cannot reach {settings.kafka_bootstrap_servers} within "
                                  f"{timeout:.0f} s ({exc.args[0].str()})") from None
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        raise UserError(f"Kafka topic {topic!r} does not exist on {settings.kafka_bootstrap_servers} "
                        "(`make up` creates it locally; on a real cluster create it or set KAFKA_TOPIC)")


def s3_client(settings: Settings, max_attempts: int = 3):
    import boto3
    from botocore.config import Config

    config = Config(region_name=settings.aws_region, retries={"max_attempts": max_attempts, "mode": "standard"},
                    max_pool_connections=32, connect_timeout=5, read_timeout=30,
                    # botocore >= 1.36 computes a CRC of every upload by default: 15% of the
                    # client's CPU per put here, for a check TLS and S3's own MD5 already cover.
                    request_checksum_calculation="when_required",
                    # moto and MinIO want path-style addressing; real AWS is fine with it too.
                    s3={"addressing_style": "path"} if settings.s3_endpoint_url else None)
    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url or None, config=config)


def meili_client(settings: Settings, key: str | None = None, timeout: int = 30):
    """A MeiliSearch client; by default with the indexing key (admin where configured)."""
    import meilisearch

    return meilisearch.Client(settings.meili_url, key if key is not None else settings.indexing_key,
                              timeout=timeout)


def meili_search_client(settings: Settings, timeout: int = 30):
    """A client for reading: the search-only key when one is configured."""
    return meili_client(settings, key=settings.reading_key, timeout=timeout)
