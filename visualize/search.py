#!/usr/bin/env python3
"""Search the image index: full-text query, MeiliSearch filter and sort, printed as a table.

The query matches file_name, key, format, dominant_color, bucket and the text read in the
image (the enricher's `text`: the line that matched is shown); an empty query lists everything
the filter lets through. Filters and sorts use the attributes of
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

from imgpipe import cli, meili
from imgpipe.errors import UserError
from imgpipe.settings import Settings, load_settings

HIT_COLUMNS = ["file_name", "size_kb", "width×height", "format", "faces", "timestamp (UTC)", "key"]
# MeiliSearch marks the words that matched in `_formatted` with these (never in document text:
# private-use characters), so the matching line can be found and shown with its words marked.
MATCH_START, MATCH_END = "\ue000", "\ue001"
SHOWN_LINE_CHARS = 80


def build_parser() -> argparse.ArgumentParser:
    from tabulate import tabulate_formats

    p = cli.parser("visualize/search.py", __doc__, [
        "python visualize/search.py cat",
        "python visualize/search.py invoice --filter 'text_chars > 0'   # words read inside images",
        "python visualize/search.py cat --filter 'faces > 0 AND format = \"jpeg\"' --sort timestamp:desc --limit 20",
        "python visualize/search.py --filter 'size_kb > 1000' --sort size_kb:desc --json",
        "python visualize/search.py --similar 'raw/photos/cat 1.jpg' --limit 10   # images that look alike",
        "MEILI_INDEX=cats python visualize/search.py --filter 'width >= 1920' --tablefmt github"])
    p.add_argument("query", nargs="?", help="words to search for (none: every document the filter lets through)")
    p.add_argument("--similar", metavar="KEY",
                   help="list the images most like the one at object KEY (its descriptor, by cosine), best first")
    p.add_argument("--bucket", help="bucket of --similar KEY (env S3_BUCKET)")
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


def run_similar(settings: Settings, key: str, bucket: str, params: dict) -> dict:
    """MeiliSearch's similar-documents answer for the image at bucket/key (hits with _rankingScore)."""
    from imgpipe.document import EMBEDDER, document_id

    request = {"id": document_id(bucket, key), "embedder": EMBEDDER, "showRankingScore": True, **params}
    try:
        with meili.errors("finding images similar to", settings, settings.meili_index):
            return meili.search_client(settings).index(settings.meili_index).get_similar_documents(request)
    except meili.MeiliError as exc:
        if exc.code == "not_found_similar_id":
            raise UserError(f"no image s3://{bucket}/{cli.printable(key)} in index {settings.meili_index!r} "
                            "(the key must be exact: see `search.py --json`)") from None
        if exc.code == "invalid_similar_embedder":
            raise meili.MeiliError("finding similar images", settings.meili_url, settings.meili_index, exc.code,
                                   exc.message, exc.kind,
                                   summary=f"index {settings.meili_index!r} holds no image descriptors yet: process "
                                           "its images again with this version of the consumer") from None
        raise meili.as_user_error(exc) from None


def search_params(args) -> dict:
    params: dict = {"limit": args.limit, "offset": args.offset}
    if args.query:
        params.update({"attributesToHighlight": ["text"], "highlightPreTag": MATCH_START,
                       "highlightPostTag": MATCH_END})
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


def matching_lines(hit: dict) -> list[tuple[str, list[tuple[str, bool]]]]:
    """The lines of the hit's `text` in which the query matched, each as its plain text and as
    parts (text, matched?) for showing the matched words."""
    formatted = (hit.get("_formatted") or {}).get("text") or ""
    lines = []
    for line in formatted.split("\n"):
        if MATCH_START not in line:
            continue
        parts = []
        for i, piece in enumerate(line.split(MATCH_START)):
            matched, _, rest = piece.partition(MATCH_END) if i else ("", "", piece)
            if matched:
                parts.append((matched, True))
            if rest:
                parts.append((rest, False))
        lines.append(("".join(text for text, _ in parts), parts))
    return lines


def shown_match(hit: dict) -> str:
    """The first matching line, its matched words in [brackets], cut to SHOWN_LINE_CHARS."""
    lines = matching_lines(hit)
    if not lines:
        return ""
    text = "".join(f"[{t}]" if matched else t for t, matched in lines[0][1])
    return cli.printable(text if len(text) <= SHOWN_LINE_CHARS else text[:SHOWN_LINE_CHARS - 1] + "…")


def hits_table(hits: list[dict], tablefmt: str = "simple") -> str:
    from visualize.documents import to_frame
    from visualize.tables import image_rows, render

    if not hits:
        return ""
    frame = to_frame(hits)
    rows = [row + [cli.printable(key or "")] for row, key in zip(image_rows(frame), frame["key"])]
    if all("_rankingScore" in hit for hit in hits):  # --similar: how alike, 1.0 = the same picture
        return render([[round(hit["_rankingScore"], 3), *row] for hit, row in zip(hits, rows)],
                      ["likeness", *HIT_COLUMNS], tablefmt)
    if any(matching_lines(hit) for hit in hits):  # words found inside images: show the line
        return render([row + [shown_match(hit)] for hit, row in zip(hits, rows)], [*HIT_COLUMNS, "text in image"],
                      tablefmt)
    return render(rows, HIT_COLUMNS, tablefmt)


def summary_line(response: dict, query: str, shown: int) -> str:
    total = response.get("estimatedTotalHits", response.get("totalHits", shown))
    what = f"for {cli.printable(query)!r}" if query else "(no query)"
    return f"search: {shown:,} of about {total:,} hits {what} in {response.get('processingTimeMs', 0)} ms"


def search(args) -> int:
    cli.check_ranges(args, {"limit": (1, None), "offset": (0, None)})
    if args.similar is not None and (args.query or args.sort):
        raise UserError("--similar ranks by likeness: it takes no query words and no --sort (--filter works)")
    settings = load_settings()
    settings = settings.with_options(args, {"index": "meili_index"})
    query = args.query or ""
    if args.similar is not None:
        params = {k: v for k, v in search_params(args).items() if k != "sort"}
        response = run_similar(settings, args.similar, args.bucket or settings.s3_bucket, params)
        query = f"images like {args.similar}"
    else:
        response = run_search(settings, query, search_params(args))
    hits = response["hits"]
    if args.json:
        for hit in hits:
            hit.pop("_formatted", None)
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
