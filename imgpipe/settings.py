"""Every setting of the pipeline, read from the environment (and `.env`) in one place.

Scripts call `load_settings()` inside `main()`, never at import time, so tests can
build settings from a dict and real environment variables always win over `.env`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Collection, Mapping, Sequence
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
    # The Kafka topic an S3 server publishes its bucket notifications to (the local stack's
    # versitygw, MinIO, Ceph RGW): `make up` creates it and turns versitygw's notifications on;
    # producer --notifications-topic reads it. Empty: no notifications.
    s3_notifications_topic: str = "s3-notifications"
    # How that server writes object keys in a notification: "none" as they are (versitygw), "url"
    # URL-encoded with + for a space (AWS, MinIO).
    s3_notifications_key_encoding: str = "none"
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
        """A copy with these fields changed, checked as settings from the environment are
        (SettingsError lists every problem)."""
        return _checked(replace(self, **changes), {})

    def with_options(self, args, options: Mapping[str, str]) -> "Settings":
        """A copy with the command-line options that were given (not None) applied, checked:
        `options` maps an argparse dest to its field, and a problem names the option and the
        variable behind it (`--metrics-port (env METRICS_PORT) must be ...`)."""
        changes = {attr: getattr(args, dest) for dest, attr in options.items() if getattr(args, dest) is not None}
        names = {attr: f"--{dest.replace('_', '-')} (env {ENV_VAR_OF[attr]})" for dest, attr in options.items()}
        return _checked(replace(self, **changes), names)


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
    "S3_NOTIFICATIONS_TOPIC": "s3_notifications_topic",
    "S3_NOTIFICATIONS_KEY_ENCODING": "s3_notifications_key_encoding",
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
_SWITCHES = {"s3_fast_path"}
_URLS = {"s3_endpoint_url", "meili_url", "sqs_queue_url"}
_REQUIRED = {"kafka_bootstrap_servers", "kafka_topic", "kafka_dead_letter_topic", "kafka_consumer_group",
             "s3_bucket", "meili_url", "meili_index"}
KEY_ENCODINGS = ("none", "url")  # S3_NOTIFICATIONS_KEY_ENCODING
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse(attr: str, raw: str):
    """Turn one raw string into the field's type; raise ValueError with a short reason. Ranges and
    rules between fields are checked on the typed values, by `_problems`."""
    raw = raw.strip()
    if attr in _POSITIVE_INTS or attr in _ZERO_OK_INTS:
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"must be a whole number, got {raw!r}") from None
    if attr in _POSITIVE_FLOATS:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"must be a number, got {raw!r}") from None
    if attr in _SWITCHES:
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
    if attr == "s3_notifications_key_encoding":
        if raw.lower() not in KEY_ENCODINGS:
            raise ValueError(f"must be one of {', '.join(KEY_ENCODINGS)}, got {raw!r}")
        return raw.lower()
    if attr == "s3_allowed_buckets":
        return tuple(b.strip() for b in raw.split(",") if b.strip())
    if attr == "local_state_dir":
        path = Path(raw)
        return path if path.is_absolute() else REPO_ROOT / path
    if attr in _URLS:
        return raw.rstrip("/")
    if attr in ("s3_raw_prefix", "s3_processed_prefix", "s3_export_prefix"):
        return raw if not raw or raw.endswith("/") else raw + "/"
    return raw


def _field_problem(attr: str, value) -> str | None:
    """What is wrong with one typed value, or None."""
    if attr in _POSITIVE_INTS or attr in _ZERO_OK_INTS:
        if not isinstance(value, int) or isinstance(value, bool):
            return f"must be a whole number, got {value!r}"
        if attr in _ZERO_OK_INTS and value < 0:
            return f"must be 0 or more, got {value}"
        if attr in _POSITIVE_INTS and value < 1:
            return f"must be at least 1, got {value}"
        if attr == "metrics_port" and value > 65535:
            return f"must be a TCP port (1-65535) or 0, got {value}"
    if attr in _POSITIVE_FLOATS:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < float("inf"):
            return f"must be a positive number, got {value!r}"
    if attr in _SWITCHES and not isinstance(value, bool):
        return f"must be on or off, got {value!r}"
    if attr in _URLS and value:
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            return f"must be an http(s) URL, got {value!r}"
    if attr in _REQUIRED and not value:
        return "must not be empty"
    if attr == "s3_notifications_key_encoding" and value not in KEY_ENCODINGS:
        return f"must be one of {', '.join(KEY_ENCODINGS)}, got {value!r}"
    if attr == "meili_master_key" and value and len(value.encode()) < MIN_MEILI_MASTER_KEY_BYTES:
        # Never echo the key itself.
        return f"must be at least {MIN_MEILI_MASTER_KEY_BYTES} bytes (it is {len(value.encode())})"
    return None


def _shown(prefix: str) -> str:
    return repr(prefix) if prefix else "empty: the whole bucket"


def _overlapping_prefixes(settings: Settings, name) -> list[str]:
    """The pipeline must not eat its own output: the producer announces everything under the raw
    prefix, so derived images or the exported CSV written inside it would be processed again (and
    again). A prefix contains another when one starts with the other; the empty prefix contains all."""
    named = [(name(attr), getattr(settings, attr)) for attr in ("s3_raw_prefix", "s3_processed_prefix",
                                                                 "s3_export_prefix")]
    problems = []
    for i, (name_a, a) in enumerate(named):
        for name_b, b in named[i + 1:]:
            if a.startswith(b) or b.startswith(a):
                problems.append(f"{name_a} ({_shown(a)}) and {name_b} ({_shown(b)}) must not contain one another "
                                "(the pipeline would process its own output)")
    return problems


def _problems(settings: Settings, names: Mapping[str, str], skip: Collection[str] = ()) -> list[str]:
    """Every problem of these settings, each naming its field as `names` says (an option, say) or
    else by its environment variable. The one check of the environment and of overrides alike;
    `skip`: fields already reported (a value that could not be parsed)."""
    def name(attr: str) -> str:
        return names.get(attr) or ENV_VAR_OF[attr]

    problems = []
    for attr in ENV_VARS.values():
        problem = None if attr in skip else _field_problem(attr, getattr(settings, attr))
        if problem:
            problems.append(f"{name(attr)} {problem}")
    if settings.kafka_topic and settings.kafka_topic == settings.kafka_dead_letter_topic:
        problems.append(f"{name('kafka_dead_letter_topic')} must differ from {name('kafka_topic')}")
    if settings.s3_notifications_topic and settings.s3_notifications_topic in (
            settings.kafka_topic, settings.kafka_dead_letter_topic):
        problems.append(f"{name('s3_notifications_topic')} must differ from {name('kafka_topic')} and "
                        f"{name('kafka_dead_letter_topic')} (notifications are the producer's input, events its output)")
    if all(isinstance(getattr(settings, attr), str) for attr in ("s3_raw_prefix", "s3_processed_prefix",
                                                                  "s3_export_prefix")):
        problems += _overlapping_prefixes(settings, name)
    return problems


def _checked(settings: Settings, names: Mapping[str, str], skip: Collection[str] = (),
             problems: Sequence[str] = ()) -> Settings:
    problems = [*problems, *_problems(settings, names, skip)]
    if problems:
        raise SettingsError("invalid settings:\n  - " + "\n  - ".join(problems))
    return settings


def settings_from_mapping(env: Mapping[str, str]) -> Settings:
    """Build Settings from a mapping of environment variables, listing every problem at once."""
    values: dict[str, object] = {}
    unparsed: dict[str, str] = {}
    for env_name, attr in ENV_VARS.items():
        if env_name not in env:
            continue
        try:
            values[attr] = _parse(attr, env[env_name])
        except ValueError as exc:
            unparsed[attr] = f"{env_name} {exc}"
    return _checked(Settings(**values), {}, skip=unparsed, problems=list(unparsed.values()))


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
        elif f.name in _SWITCHES:
            text = "on" if value else "off"
        else:
            text = str(value)
        env[ENV_VAR_OF[f.name]] = text
    return env
