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

from imgpipe import meili
from imgpipe.settings import REPO_ROOT, Settings, load_settings
from stack.services import S3, Service, StackError, Status, all_services

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


def ensure_api_keys(settings: Settings, env_file: Path = ENV_FILE) -> Settings:
    """Store MeiliSearch's default admin and search-only keys in .env, so that indexing and
    reading never need the master key."""
    from dotenv import dotenv_values, set_key

    if settings.meili_admin_key and settings.meili_search_key:
        return settings
    with meili.errors("listing the API keys", settings):
        keys = meili.client(settings, key=settings.meili_master_key).get_keys({"limit": 100}).results
    by_name = {k.name: k.key for k in keys}
    admin = settings.meili_admin_key or by_name.get("Default Admin API Key", "")
    search = settings.meili_search_key or by_name.get("Default Search API Key", "")
    on_file = dotenv_values(env_file) if env_file.exists() else {}
    # Only remember keys of the server .env describes: settings that came from the environment
    # (a second stack, a test) must not overwrite the keys of the main one.
    if (on_file.get("MEILI_URL", "").rstrip("/") == settings.meili_url
            and on_file.get("MEILI_MASTER_KEY") == settings.meili_master_key):
        if admin and not settings.meili_admin_key:
            set_key(str(env_file), "MEILI_ADMIN_KEY", admin, quote_mode="never")
        if search and not settings.meili_search_key:
            set_key(str(env_file), "MEILI_SEARCH_KEY", search, quote_mode="never")
    return settings.with_overrides(meili_admin_key=admin, meili_search_key=search)


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
