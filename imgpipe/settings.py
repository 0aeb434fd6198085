"""Every setting of the pipeline, read from the environment (and `.env`) in one place.

Scripts call `load_settings()` inside `main()`, never at import time, so tests can
build settings from a dict and real environment variables always win over `.env`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Mapping
from urllib.parse import urlparse

from imgpipe.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
MIN_MEILI_MASTER_KEY_BYTES = 16


class SettingsError(UserError):
    """One or more settings are missing or invalid; the message lists all of them."""


@dataclass(frozen=True)
class Settings:
    # Kafka
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_topic: str = "image-events"
    kafka_dead_letter_topic: str = "image-events-dlq"
    # Where the consumer announces what MeiliSearch confirmed (imgpipe/indexed.py), for the
    # enrichment stages; empty: announce nothing.
    kafka_indexed_topic: str = "image-indexed"
    # The enrichment stages (enricher/): their consumer group (one per model set), the backfill's
    # own lane, and their own dead-letter topic.
    kafka_enricher_group: str = "image-enricher"
    kafka_backfill_topic: str = "image-indexed-backfill"
    kafka_enricher_dead_letter_topic: str = "image-indexed-dlq"
    kafka_consumer_group: str = "image-consumer"
    kafka_topic_partitions: int = 6
    # Extra librdkafka options (SASL/TLS on a real cluster). May hold passwords: never shown.
    kafka_client_config: Mapping[str, str] = field(default_factory=dict, repr=False)
    # S3
    s3_endpoint_url: str = "http://127.0.0.1:9000"  # empty means real AWS
    aws_region: str = "us-east-1"
    s3_bucket: str = "images"
    s3_raw_prefix: str = "raw/"
    s3_processed_prefix: str = "processed/"
    s3_export_prefix: str = "data/"  # where export_csv.py --upload puts the CSV
    s3_allowed_buckets: tuple[str, ...] = ()
    # The consumer's GETs and PUTs through obstore (errors and awkward keys still go through boto3).
    s3_fast_path: bool = True
    # The SQS queue receiving the bucket's S3 Event Notifications (producer --sqs-queue-url).
    sqs_queue_url: str = ""
    # MeiliSearch
    meili_url: str = "http://127.0.0.1:7700"
    meili_master_key: str = field(default="", repr=False)
    meili_admin_key: str = field(default="", repr=False)
    meili_search_key: str = field(default="", repr=False)
    meili_index: str = "image_metadata"
    # Consumer
    consumer_batch_size: int = 200
    consumer_batch_ms: int = 100
    consumer_workers: int = 0  # 0 means one per CPU core
    max_object_bytes: int = 50 * 1024 * 1024
    max_image_pixels: int = 100_000_000
    thumbnail_size: int = 256
    grayscale_max_size: int = 640  # 0 means full size
    face_detection: bool = True
    # Per-image budgets: wall time of processing, decoded size estimated from the header, and a
    # hard memory cap on each worker process (what gets past the estimate kills only its worker).
    processing_timeout_seconds: float = 30.0
    max_decode_bytes: int = 512 * 1024 * 1024
    worker_memory_mb: int = 2048  # memory a worker may take for one image, above its own at rest; 0: no cap
    # Prometheus metrics of the consumer and the producer on 127.0.0.1:<port>; 0 means off.
    metrics_port: int = 0
    # Local stack
    local_state_dir: Path = REPO_ROOT / ".local"

    @property
    def allowed_buckets(self) -> tuple[str, ...]:
        """Buckets the consumer may read: a forged event cannot point it anywhere else."""
        return self.s3_allowed_buckets or (self.s3_bucket,)

    @property
    def indexing_key(self) -> str:
        """The key that writes to the index: an admin key where one is set, else the master key."""
        return self.meili_admin_key or self.meili_master_key

    @property
    def reading_key(self) -> str:
        """The key that reads the index: the search-only key where one is set."""
        return self.meili_search_key or self.indexing_key

    def with_overrides(self, **changes) -> "Settings":
        return replace(self, **changes)


# Environment variable -> Settings field. One table so `.env.example`, `--help` and
# the parser cannot drift apart.
ENV_VARS: dict[str, str] = {
    "KAFKA_BOOTSTRAP_SERVERS": "kafka_bootstrap_servers",
    "KAFKA_TOPIC": "kafka_topic",
    "KAFKA_DEAD_LETTER_TOPIC": "kafka_dead_letter_topic",
    "KAFKA_INDEXED_TOPIC": "kafka_indexed_topic",
    "KAFKA_ENRICHER_GROUP": "kafka_enricher_group",
    "KAFKA_BACKFILL_TOPIC": "kafka_backfill_topic",
    "KAFKA_ENRICHER_DEAD_LETTER_TOPIC": "kafka_enricher_dead_letter_topic",
    "KAFKA_CONSUMER_GROUP": "kafka_consumer_group",
    "KAFKA_TOPIC_PARTITIONS": "kafka_topic_partitions",
    "KAFKA_CLIENT_CONFIG": "kafka_client_config",
    "S3_ENDPOINT_URL": "s3_endpoint_url",
    "AWS_REGION": "aws_region",
    "S3_BUCKET": "s3_bucket",
    "S3_RAW_PREFIX": "s3_raw_prefix",
    "S3_PROCESSED_PREFIX": "s3_processed_prefix",
    "S3_EXPORT_PREFIX": "s3_export_prefix",
    "S3_ALLOWED_BUCKETS": "s3_allowed_buckets",
    "S3_FAST_PATH": "s3_fast_path",
    "SQS_QUEUE_URL": "sqs_queue_url",
    "MEILI_URL": "meili_url",
    "MEILI_MASTER_KEY": "meili_master_key",
    "MEILI_ADMIN_KEY": "meili_admin_key",
    "MEILI_SEARCH_KEY": "meili_search_key",
    "MEILI_INDEX": "meili_index",
    "CONSUMER_BATCH_SIZE": "consumer_batch_size",
    "CONSUMER_BATCH_MS": "consumer_batch_ms",
    "CONSUMER_WORKERS": "consumer_workers",
    "MAX_OBJECT_BYTES": "max_object_bytes",
    "MAX_IMAGE_PIXELS": "max_image_pixels",
    "THUMBNAIL_SIZE": "thumbnail_size",
    "GRAYSCALE_MAX_SIZE": "grayscale_max_size",
    "FACE_DETECTION": "face_detection",
    "PROCESSING_TIMEOUT_SECONDS": "processing_timeout_seconds",
    "MAX_DECODE_BYTES": "max_decode_bytes",
    "WORKER_MEMORY_MB": "worker_memory_mb",
    "METRICS_PORT": "metrics_port",
    "LOCAL_STATE_DIR": "local_state_dir",
}
ENV_VAR_OF = {attr: env for env, attr in ENV_VARS.items()}

_POSITIVE_INTS = {"kafka_topic_partitions", "consumer_batch_size", "consumer_batch_ms",
                  "max_object_bytes", "max_image_pixels", "thumbnail_size", "max_decode_bytes"}
_POSITIVE_FLOATS = {"processing_timeout_seconds"}
_ZERO_OK_INTS = {"consumer_workers", "grayscale_max_size", "worker_memory_mb", "metrics_port"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse(attr: str, raw: str):
    """Turn one raw string into the field's type; raise ValueError with a short reason."""
    raw = raw.strip()
    if attr in _POSITIVE_INTS or attr in _ZERO_OK_INTS:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"must be a whole number, got {raw!r}") from None
        zero_ok = attr in _ZERO_OK_INTS
        if value < (0 if zero_ok else 1):
            raise ValueError(f"must be {'0 or more' if zero_ok else 'at least 1'}, got {value}")
        return value
    if attr in _POSITIVE_FLOATS:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"must be a number, got {raw!r}") from None
        if not value > 0 or value == float("inf"):
            raise ValueError(f"must be a positive number, got {raw!r}")
        return value
    if attr in ("face_detection", "s3_fast_path"):
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ValueError(f"must be on/off (or true/false), got {raw!r}")
    if attr == "kafka_client_config":
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            # Do not echo the value: it may hold a SASL password.
            raise ValueError("must be a JSON object of librdkafka options") from None
        if not isinstance(value, dict):
            raise ValueError("must be a JSON object of librdkafka options")
        return {str(k): str(v) for k, v in value.items()}
    if attr == "s3_allowed_buckets":
        return tuple(b.strip() for b in raw.split(",") if b.strip())
    if attr == "local_state_dir":
        path = Path(raw)
        return path if path.is_absolute() else REPO_ROOT / path
    if attr in ("s3_endpoint_url", "meili_url", "sqs_queue_url") and raw:
        parsed = urlparse(raw)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"must be an http(s) URL, got {raw!r}")
        return raw.rstrip("/")
    if attr in ("s3_raw_prefix", "s3_processed_prefix", "s3_export_prefix"):
        return raw if not raw or raw.endswith("/") else raw + "/"
    return raw


def _shown(prefix: str) -> str:
    return repr(prefix) if prefix else "empty: the whole bucket"


def _overlapping_prefixes(settings: Settings) -> list[str]:
    """The pipeline must not eat its own output: the producer announces everything under the raw
    prefix, so derived images or the exported CSV written inside it would be processed again (and
    again). A prefix contains another when one starts with the other; the empty prefix contains all."""
    named = [("S3_RAW_PREFIX", settings.s3_raw_prefix), ("S3_PROCESSED_PREFIX", settings.s3_processed_prefix),
             ("S3_EXPORT_PREFIX", settings.s3_export_prefix)]
    problems = []
    for i, (name_a, a) in enumerate(named):
        for name_b, b in named[i + 1:]:
            if a.startswith(b) or b.startswith(a):
                problems.append(f"{name_a} ({_shown(a)}) and {name_b} ({_shown(b)}) must not contain one another "
                                "(the pipeline would process its own output)")
    return problems


def settings_from_mapping(env: Mapping[str, str]) -> Settings:
    """Build Settings from a mapping of environment variables, listing every problem at once."""
    values: dict[str, object] = {}
    problems: list[str] = []
    for env_name, attr in ENV_VARS.items():
        if env_name not in env:
            continue
        try:
            values[attr] = _parse(attr, env[env_name])
        except ValueError as exc:
            problems.append(f"{env_name} {exc}")
    settings = Settings(**values)
    for name in ("kafka_bootstrap_servers", "kafka_topic", "kafka_dead_letter_topic",
                 "kafka_consumer_group", "s3_bucket", "meili_url", "meili_index"):
        if not getattr(settings, name):
            problems.append(f"{ENV_VAR_OF[name]} must not be empty")
    if settings.kafka_topic and settings.kafka_topic == settings.kafka_dead_letter_topic:
        problems.append("KAFKA_DEAD_LETTER_TOPIC must differ from KAFKA_TOPIC")
    problems += _overlapping_prefixes(settings)
    if settings.metrics_port > 65535:
        problems.append(f"METRICS_PORT must be a TCP port (1-65535) or 0, got {settings.metrics_port}")
    if settings.meili_master_key and len(settings.meili_master_key.encode()) < MIN_MEILI_MASTER_KEY_BYTES:
        problems.append(f"MEILI_MASTER_KEY must be at least {MIN_MEILI_MASTER_KEY_BYTES} bytes "
                        f"(it is {len(settings.meili_master_key.encode())})")
    if problems:
        raise SettingsError("invalid settings:\n  - " + "\n  - ".join(problems))
    return settings


def load_settings(env_file: Path | None = None, require_meili_key: bool = False) -> Settings:
    """Read `.env` (without overriding real environment variables), then the environment."""
    from dotenv import load_dotenv

    # override=False: a real environment variable always wins over the file. Loading into
    # os.environ also hands AWS_ACCESS_KEY_ID & co. to boto3's own credential chain.
    load_dotenv(env_file or REPO_ROOT / ".env", override=False)
    settings = settings_from_mapping({k: v for k, v in os.environ.items() if k in ENV_VARS})
    if require_meili_key and not settings.indexing_key:
        raise SettingsError("invalid settings:\n  - MEILI_MASTER_KEY (or MEILI_ADMIN_KEY) is not set; "
                            "`make up` generates one for the local stack")
    return settings


def to_env(settings: Settings) -> dict[str, str]:
    """The environment variables that reproduce these settings (for child processes).

    Holds secrets: pass it to subprocesses, never print it."""
    env = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        if f.name == "kafka_client_config":
            text = json.dumps(dict(value)) if value else ""
        elif f.name == "s3_allowed_buckets":
            text = ",".join(value)
        elif f.name in ("face_detection", "s3_fast_path"):
            text = "on" if value else "off"
        else:
            text = str(value)
        env[ENV_VAR_OF[f.name]] = text
    return env
