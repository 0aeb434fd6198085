#!/usr/bin/env python3
"""A web dashboard of the pipeline: search with thumbnails, one image with its look-alikes, the
charts and totals of report.py, the latest dead letters with their reasons, and the consumer's
status (rates, lag per partition) from its Prometheus metrics.

Server-rendered (no JavaScript), on 127.0.0.1 only: it has no login, so reach it from elsewhere
through an SSH tunnel. It reads MeiliSearch with the search-only key, S3 only for the thumbnails
and grayscale versions of indexed documents (keys under S3_PROCESSED_PREFIX), Kafka only for the
last dead letters; no key ever reaches the browser. Every page is also JSON: add ?format=json.

Settings from the environment and .env: MEILI_URL, MEILI_SEARCH_KEY, MEILI_INDEX,
S3_ENDPOINT_URL, S3_BUCKET, S3_PROCESSED_PREFIX, KAFKA_BOOTSTRAP_SERVERS, KAFKA_DEAD_LETTER_TOPIC.
Exit status: 0 stopped with Ctrl-C, 2 usage or settings error (the port is taken, say).
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from pathlib import Path
from urllib.parse import urlparse

from imgpipe import cli
from imgpipe.errors import UserError
from imgpipe.settings import load_settings

log = logging.getLogger("dashboard")

DEFAULT_PORT = 8888


def build_parser() -> argparse.ArgumentParser:
    from visualize.web import DEFAULT_DEAD_LETTERS, MAX_DEAD_LETTERS

    p = cli.parser("visualize/dashboard.py", __doc__, [
        "make dashboard                                        # http://127.0.0.1:8888",
        "python visualize/dashboard.py --metrics-url http://127.0.0.1:9464/metrics",
        "python visualize/dashboard.py --port 8899 --index cats --dead-letters 200",
        "ssh -L 8888:127.0.0.1:8888 pipeline-host   # from a laptop, then open http://127.0.0.1:8888"])
    p.add_argument("--host", default="127.0.0.1", help="loopback address to listen on (127.0.0.1 or ::1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on")
    p.add_argument("--index", help="MeiliSearch index to show (env MEILI_INDEX)")
    p.add_argument("--metrics-url", action="append", default=[], metavar="URL",
                   help="a Prometheus metrics endpoint of the consumer or the producer (started with "
                   "--metrics-port), e.g. http://127.0.0.1:9464/metrics; repeatable")
    p.add_argument("--dead-letters", type=int, default=DEFAULT_DEAD_LETTERS, metavar="N",
                   help=f"dead letters shown, the newest first (1 to {MAX_DEAD_LETTERS}; "
                   "env KAFKA_DEAD_LETTER_TOPIC names the topic)")
    p.add_argument("--mapreduce-dir", type=Path, default=Path("out/mapreduce"), metavar="DIR",
                   help="MapReduce output for its chart and the exact total size")
    p.add_argument("--consumer-summary", type=Path, default=Path("out/consumer_summary.json"), metavar="FILE",
                   help='JSON object with "dead_lettered" for the totals, when present')
    p.add_argument("--threads", type=int, default=8, help="requests served at once")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def check_args(args) -> None:
    from visualize.web import MAX_DEAD_LETTERS

    try:
        address = ipaddress.ip_address(args.host.strip("[]"))
    except ValueError:
        address = None
    if args.host != "localhost" and (address is None or not address.is_loopback):
        raise UserError(f"--host {args.host}: the dashboard has no login, so it listens on loopback only "
                        "(127.0.0.1 or ::1); reach it from another machine through an SSH tunnel")
    cli.check_ranges(args, {"port": (0, 65535), "dead_letters": (1, MAX_DEAD_LETTERS), "threads": (1, None)})
    for url in args.metrics_url:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise UserError(f"--metrics-url must be an http(s) URL, got {cli.printable(url)!r}")


def serve(args) -> int:
    import socket

    import waitress

    from visualize.web import Options, create_app

    check_args(args)
    settings = load_settings()
    settings = settings.with_options(args, {"index": "meili_index"})
    app = create_app(settings, Options(metrics_urls=tuple(args.metrics_url), dead_letters=args.dead_letters,
                                       mapreduce_dir=args.mapreduce_dir, consumer_summary=args.consumer_summary))
    try:
        server = waitress.create_server(app, host=args.host, port=args.port, threads=args.threads,
                                        ident="imgpipe-dashboard", clear_untrusted_proxy_headers=True)
    except OSError as exc:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    host, port = server.socket.getsockname()[:2]
    shown = f"[{host}]" if server.socket.family == socket.AF_INET6 else host
    print(f"dashboard: http://{shown}:{port}/  (index {settings.meili_index!r}; Ctrl-C stops it)", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        print("dashboard: stopped", file=sys.stderr)
    finally:
        server.close()
    return cli.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    # waitress logs each unexpected error with its traceback; that is for the terminal, not the browser.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    return cli.run(lambda: serve(args))


if __name__ == "__main__":
    sys.exit(main())
