"""Start, check and stop the local stack.

The state (jars, binaries, data, logs, pid files) lives in LOCAL_STATE_DIR (default .local/),
which git ignores. `up` is idempotent; `down` stops exactly the processes `up` started.
"""
from __future__ import annotations

import logging
import secrets
import shutil
import sys
from pathlib import Path

from imgpipe import cli
from imgpipe.settings import REPO_ROOT, Settings, load_settings
from stack.services import StackError, Status, all_services

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


def ensure_api_keys(settings: Settings, env_file: Path = ENV_FILE) -> Settings:
    """Store MeiliSearch's default admin and search-only keys in .env, so that indexing and
    reading never need the master key."""
    from dotenv import dotenv_values, set_key

    if settings.meili_admin_key and settings.meili_search_key:
        return settings
    from imgpipe.clients import meili_client

    keys = meili_client(settings, key=settings.meili_master_key).get_keys({"limit": 100}).results
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


def ensure_running() -> tuple[Settings, list]:
    """Start every local service that is not running; returns the settings (with the API keys)
    and the services this call started, so a caller can stop exactly those afterwards."""
    ensure_env_file()
    settings = load_settings()
    started = []
    for service in all_services(settings):
        was_running = service.pid() is not None or service.healthy()
        status = service.start()
        if not status.healthy:
            raise StackError(f"{service.name} is not healthy at {service.url}; read {service.logfile}")
        if not was_running:
            started.append(service)
    return ensure_api_keys(settings), started


def print_status(rows: list[Status]) -> None:
    from tabulate import tabulate

    table = [(s.name, s.url, s.pid or "-", "local" if s.managed else "external",
              "healthy" if s.healthy else "DOWN", s.detail) for s in rows]
    print(tabulate(table, headers=["service", "url", "pid", "run by", "health", "detail"]))


def down(settings: Settings) -> int:
    for service in reversed(all_services(settings)):
        if service.stop():
            print(f"stopped {service.name}")
        else:
            print(f"{service.name}: not running (or not started by this stack)")
    return 0


def status(settings: Settings) -> int:
    rows = [s.status() for s in all_services(settings)]
    print_status(rows)
    return 0 if all(r.healthy for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("python -m stack", __doc__, [
        "python -m stack up      # install on first run, start, wait until healthy",
        "python -m stack status  # url, pid and health of each service",
        "python -m stack down    # stop what `up` started"])
    p.add_argument("command", choices=["up", "status", "down"])
    args = p.parse_args(argv)
    cli.setup_logging()

    def body() -> int:
        try:
            if args.command == "up":
                settings, _ = ensure_running()
                return status(settings)
            return {"status": status, "down": down}[args.command](load_settings())
        except StackError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
