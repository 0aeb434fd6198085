"""The local stack's lifecycle as a library: create `.env` and its keys, start what is missing,
report, stop. `python -m stack` is a thin CLI over it; the demo, the benchmarks and the tests
call `ensure_running()` and stop exactly the services it says it started.
"""
from __future__ import annotations

import logging
import os
import secrets
import shutil
from pathlib import Path

from imgpipe import access
from imgpipe.settings import REPO_ROOT, Settings, load_settings
from stack.services import S3, MeiliSearch, Service, StackError, Status, all_services

log = logging.getLogger("stack")

ENV_FILE = REPO_ROOT / ".env"


def ensure_env_file(env_file: Path = ENV_FILE) -> None:
    """Create .env from .env.example on first run and give MeiliSearch a fresh master key."""
    from dotenv import dotenv_values, set_key

    if not env_file.exists():
        shutil.copyfile(REPO_ROOT / ".env.example", env_file)
        env_file.chmod(0o600)
    if not (dotenv_values(env_file).get("MEILI_MASTER_KEY") or "").strip():
        set_key(str(env_file), "MEILI_MASTER_KEY", secrets.token_urlsafe(32), quote_mode="never")
        log.info("generated a MeiliSearch master key in %s", env_file)


# What .env.example held when the local S3 server (moto) accepted any key: replaced like empty ones.
PLACEHOLDER_S3_KEYS = {"", "local-test-key", "local-test-secret"}


def ensure_s3_keys(settings: Settings, env_file: Path = ENV_FILE) -> None:
    """Give the local S3 server an access and a secret key of its own in .env, once. Real AWS
    (or any S3 elsewhere) keeps the usual credential chain: nothing is written for it."""
    from dotenv import set_key

    if not S3(settings).is_local:
        return
    for name, make in (("AWS_ACCESS_KEY_ID", lambda: "imgpipe" + secrets.token_hex(8)),
                       ("AWS_SECRET_ACCESS_KEY", lambda: secrets.token_urlsafe(30))):
        if os.environ.get(name, "").strip() in PLACEHOLDER_S3_KEYS:
            value = make()
            set_key(str(env_file), name, value, quote_mode="never")
            os.environ[name] = value  # boto3 and the server read them from the environment
            log.info("generated %s for the local S3 server in %s", name, env_file)


# The local stack's keys also cover the indexes the tests (test_<id>) and the benchmarks
# (bench_<id>) make, each created first by their harness with the master key, as set-up does.
LOCAL_INDEX_PATTERNS = ("test_*", "bench_*")


def local_key_indexes(settings: Settings) -> list[str]:
    return [settings.meili_index, *(p for p in LOCAL_INDEX_PATTERNS if p != settings.meili_index)]


def ensure_api_keys(settings: Settings, env_file: Path = ENV_FILE) -> Settings:
    """The local MeiliSearch's set-up, once per `make up`: MEILI_INDEX with its settings, and the
    consumer's and the readers' keys (imgpipe/access.py), limited to MEILI_INDEX, test_* and
    bench_*, stored in .env as MEILI_ADMIN_KEY and MEILI_SEARCH_KEY, so that indexing and reading
    never use the master key. A MeiliSearch elsewhere keeps the keys it was given."""
    from dotenv import dotenv_values, set_key

    if not settings.meili_master_key or not MeiliSearch(settings).is_local:
        return settings
    keys = access.set_up(settings, settings.meili_master_key, local_key_indexes(settings))
    on_file = dotenv_values(env_file) if env_file.exists() else {}
    # Only remember keys of the server .env describes: settings that came from the environment
    # (a second stack, a test) must not overwrite the keys of the main one.
    if (on_file.get("MEILI_URL", "").rstrip("/") == settings.meili_url
            and on_file.get("MEILI_MASTER_KEY") == settings.meili_master_key):
        for setting, value in (("MEILI_ADMIN_KEY", keys.consumer), ("MEILI_SEARCH_KEY", keys.reader)):
            if on_file.get(setting) != value:
                set_key(str(env_file), setting, value, quote_mode="never")
                log.info("stored the %s key in %s (%s)", "consumer's" if setting == "MEILI_ADMIN_KEY"
                         else "readers'", env_file, setting)
    return settings.with_overrides(meili_admin_key=keys.consumer, meili_search_key=keys.reader)


def ensure_running() -> tuple[Settings, list[Service]]:
    """Start every local service that is not running; returns the settings (with the API keys)
    and the services this call started, so a caller can stop exactly those afterwards."""
    ensure_env_file()
    settings = load_settings()
    ensure_s3_keys(settings)
    started = []
    for service in all_services(settings):
        was_running = service.pid() is not None or service.healthy()
        status = service.start()
        if not status.healthy:
            raise StackError(f"{service.name} is not healthy at {service.url}; read {service.logfile}")
        if not was_running:
            started.append(service)
    return ensure_api_keys(settings), started


def stop(services: list[Service]) -> list[str]:
    """Stop these services, last started first; returns the names of those that were running."""
    return [service.name for service in reversed(services) if service.stop()]


def statuses(settings: Settings) -> list[Status]:
    return [service.status() for service in all_services(settings)]
