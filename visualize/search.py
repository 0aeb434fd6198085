#!/usr/bin/env python3
"""Search the image index: full-text query, MeiliSearch filter and sort, printed as a table.

The query matches file_name, key, format, dominant_color and bucket; an empty query lists
everything the filter lets through. Filters and sorts use the attributes of
imgpipe.document.INDEX_SETTINGS (faces, format, size_kb, width, timestamp, ...).

Settings from the environment and .env: MEILI_URL, MEILI_SEARCH_KEY (reading never needs
the master key), MEILI_INDEX.
Exit status: 0 done (also with no hits), 1 MeiliSearch unreachable, 2 usage error such as a
bad filter or sort (MeiliSearch's own message is shown).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __name__ == "__main__" and __package__ in (None, ""):
    # Run as a file, Python puts visualize/ first on sys.path, where visualize/visualize.py
    # would shadow the `visualize` package; the repo root must come first instead.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from imgpipe import cli, meili  # noqa: E402
from imgpipe.errors import UserError  # noqa: E402
from imgpipe.settings import Settings, load_settings  # noqa: E402

HIT_COLUMNS = ["file_name", "size_kb", "width×height", "format", "faces", "timestamp (UTC)", "key"]


def build_parser() -> argparse.ArgumentParser:
    from tabulate import tabulate_formats

    p = cli.parser("visualize/search.py", __doc__, [
        "python visualize/search.py cat",
        "python visualize/search.py cat --filter 'faces > 0 AND format = \"jpeg\"' --sort timestamp:desc --limit 20",
        "python visualize/search.py --filter 'size_kb > 1000' --sort size_kb:desc --json",
        "MEILI_INDEX=cats python visualize/search.py --filter 'width >= 1920' --tablefmt github"])
    p.add_argument("query", nargs="?", help="words to search for (none: every document the filter lets through)")
    p.add_argument("--filter", help="MeiliSearch filter expression, e.g. 'faces > 0 AND format = \"png\"'")
    p.add_argument("--sort", action="append", default=[], metavar="FIELD:asc|desc",
                   help="sort order (repeatable; first wins), e.g. timestamp:desc")
    p.add_argument("--limit", type=int, default=20, help="hits to show")
    p.add_argument("--offset", type=int, default=0, help="hits to skip (for paging)")
    p.add_argument("--index", help="MeiliSearch index (env MEILI_INDEX)")
    p.add_argument("--json", action="store_true", help="print the raw hits as JSON instead of a table")
    p.add_argument("--tablefmt", default="simple", choices=tabulate_formats, metavar="FORMAT",
                   help="tabulate table format: simple, github, grid, psql, plain, ...")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def search_params(args) -> dict:
    params: dict = {"limit": args.limit, "offset": args.offset}
    if args.filter:
        params["filter"] = args.filter
    if args.sort:
        params["sort"] = args.sort
    return params


def run_search(settings: Settings, query: str, params: dict) -> dict:
    """MeiliSearch's response; a wrong request is a UserError, an unreachable server an
    InfrastructureError."""
    try:
        with meili.errors("searching", settings, settings.meili_index):
            return meili.search_client(settings).index(settings.meili_index).search(query, params)
    except meili.MeiliError as exc:
        raise meili.as_user_error(exc) from None


def hits_table(hits: list[dict], tablefmt: str = "simple") -> str:
    from visualize.documents import to_frame
    from visualize.tables import image_rows, render

    if not hits:
        return ""
    frame = to_frame(hits)
    rows = [row + [cli.printable(key or "")] for row, key in zip(image_rows(frame), frame["key"])]
    return render(rows, HIT_COLUMNS, tablefmt)


def summary_line(response: dict, query: str, shown: int) -> str:
    total = response.get("estimatedTotalHits", response.get("totalHits", shown))
    what = f"for {query!r}" if query else "(no query)"
    return f"search: {shown:,} of about {total:,} hits {what} in {response.get('processingTimeMs', 0)} ms"


def search(args) -> int:
    if args.limit < 1:
        raise UserError("--limit must be at least 1")
    if args.offset < 0:
        raise UserError("--offset must be 0 or more")
    settings = load_settings()
    if args.index:
        settings = settings.with_overrides(meili_index=args.index)
    query = args.query or ""
    response = run_search(settings, query, search_params(args))
    hits = response["hits"]
    if args.json:
        json.dump(hits, sys.stdout, indent=2, ensure_ascii=False)
        print()
        print(summary_line(response, query, len(hits)), file=sys.stderr)
    else:
        if hits:
            print(hits_table(hits, args.tablefmt))
        print(summary_line(response, query, len(hits)))
    return cli.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    return cli.run(lambda: search(args))


if __name__ == "__main__":
    sys.exit(main())
