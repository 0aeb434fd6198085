"""Start, check and stop the local stack.

The state (jars, binaries, data, logs, pid files) lives in LOCAL_STATE_DIR (default .local/),
which git ignores. `up` is idempotent; `down` stops exactly the processes `up` started.
"""
from __future__ import annotations

import sys

from imgpipe import cli
from imgpipe.settings import load_settings
from stack.lifecycle import ensure_running, statuses, stop
from stack.services import StackError, Status, all_services


def print_status(rows: list[Status]) -> None:
    from tabulate import tabulate

    table = [(s.name, s.url, s.pid or "-", "local" if s.managed else "external",
              "healthy" if s.healthy else "DOWN", s.detail) for s in rows]
    print(tabulate(table, headers=["service", "url", "pid", "run by", "health", "detail"]))


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
            else:
                settings = load_settings()
            if args.command == "down":
                services = all_services(settings)
                stopped = set(stop(services))
                for service in reversed(services):
                    print(f"stopped {service.name}" if service.name in stopped
                          else f"{service.name}: not running (or not started by this stack)")
                return cli.EXIT_OK
            rows = statuses(settings)
            print_status(rows)
            return cli.EXIT_OK if all(r.healthy for r in rows) else cli.EXIT_FAILURES
        except StackError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return cli.EXIT_FAILURES

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
