"""The dashboard's web application (Flask, server-rendered with Jinja2; visualize/dashboard.py
serves it). `create_app` builds one for given settings, so tests drive the real app.

What keeps it safe to open: reads use the search-only key on the server, and neither key nor
settings object is ever handed to a template; Jinja2 escapes every value (autoescape) after
`cli.printable` has shown control characters and bidi overrides as escapes (the `finalize` hook,
so no template can forget it); images are served only by document id, from the document's own
derived keys under S3_PROCESSED_PREFIX; the Host header must name the loopback (a page from
elsewhere cannot reach the dashboard by rebinding a DNS name to 127.0.0.1); the Content Security
Policy allows no script at all, since there is none.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from imgpipe import cli
from imgpipe.errors import InfrastructureError, UserError
from imgpipe.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_DEAD_LETTERS = 50
MAX_DEAD_LETTERS = 500
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'self'; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True)
class Options:
    metrics_urls: tuple[str, ...] = ()
    dead_letters: int = DEFAULT_DEAD_LETTERS
    mapreduce_dir: Path = Path("out/mapreduce")
    consumer_summary: Path = Path("out/consumer_summary.json")
    page_size: int = 24  # thumbnails per search page
    counts_ttl_seconds: float = 10.0  # facet counts are reused this long (a charts page asks five times)


def _finalize(value):
    """Every `{{ value }}`: control characters and bidi marks shown as escapes (then autoescaped).
    Markup (a macro's output, built of values that went through here already) stays as it is."""
    from markupsafe import Markup

    if value is None:
        return ""
    return cli.printable(value) if isinstance(value, str) and not isinstance(value, Markup) else value


def create_app(settings: Settings, options: Options | None = None):
    from flask import Flask, Response, current_app, jsonify, render_template, request
    from werkzeug.exceptions import HTTPException

    from visualize.web import pages
    from visualize.web.status import StatusTracker

    app = Flask(__name__)
    app.config.update(TRUSTED_HOSTS=LOOPBACK_NAMES, MAX_CONTENT_LENGTH=64 * 1024)
    app.json.sort_keys = False  # documents keep the order of FIELDS
    app.jinja_env.finalize = _finalize
    app.jinja_env.autoescape = True  # for every template, whatever its name
    app.extensions["imgpipe"] = pages.Context(settings, options or Options(), StatusTracker())
    app.register_blueprint(pages.blueprint)

    def error_page(status: int, title: str, message: str):
        if request.args.get("format") == "json":
            return jsonify({"error": title, "message": cli.printable(message)}), status
        if current_app.url_map is None or request.url_rule is None and status == 400:
            # A request refused before routing (an untrusted Host header): no page to build links in.
            return Response(f"{status} {title}\n", status=status, mimetype="text/plain")
        return render_template("error.html", title=title, message=message, status=status), status

    @app.errorhandler(UserError)
    def user_error(exc):
        return error_page(400, "Bad request", str(exc))

    @app.errorhandler(InfrastructureError)
    def outage(exc):
        log.warning("%s", exc)
        return error_page(503, "A service is unavailable", str(exc))

    @app.errorhandler(HTTPException)
    def http_error(exc):
        return error_page(exc.code or 500, exc.name, exc.description or "")

    @app.errorhandler(Exception)
    def unexpected(exc):
        log.exception("unexpected error serving %s", request.path)
        return error_page(500, "Internal error", "the dashboard failed on this page; its log says why")

    @app.after_request
    def secure(response):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    return app
