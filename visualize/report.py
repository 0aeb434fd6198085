#!/usr/bin/env python3
"""Show what the pipeline indexed: terminal tables, PNG charts and thumbnail previews.

Counts the index with MeiliSearch facets (search-only key; no document is read for the charts,
so time and memory do not grow with the index) and reads only the few documents the
recent-images table and the previews show, by one sorted search. --all-documents reads every
document instead (any --sort field; memory grows with the index), as does --csv for an exported
CSV. The latest MapReduce output under --mapreduce-dir adds its summaries, its chart and, when it
counts the same images, the exact total size. Prints the most recent images, the MapReduce
summaries and a totals block; writes size, processing hour, format, face-count and MapReduce
charts plus a grid of up to 5 thumbnails from S3, and says where each one's numbers came from.

The dead-lettered count is shown when known: --dead-lettered N, or else the integer
"dead_lettered" of the JSON object in --consumer-summary (out/consumer_summary.json).

Settings from the environment and .env: MEILI_URL, MEILI_SEARCH_KEY (reading never needs
the master key), MEILI_INDEX, S3_ENDPOINT_URL, S3_BUCKET.
Exit status: 0 done (also for an empty or missing index), 1 a service failed,
2 usage or settings error.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from imgpipe import cli, meili, s3
from imgpipe.errors import NOT_FOUND, InfrastructureError, UserError
from imgpipe.settings import Settings, load_settings

log = logging.getLogger("visualize")

DEFAULT_OUT = Path("out")
DEFAULT_MAPREDUCE_DIR = Path("out/mapreduce")
DEFAULT_DUPLICATES_DIR = Path("out/duplicates")
DEFAULT_CONSUMER_SUMMARY = Path("out/consumer_summary.json")


def build_parser() -> argparse.ArgumentParser:
    from tabulate import tabulate_formats

    from visualize.previews import MAX_PREVIEWS

    p = cli.parser("visualize/report.py", __doc__, [
        "python visualize/report.py                                   # index MEILI_INDEX -> out/",
        "python visualize/report.py --csv out/image_metadata.csv --previews 0 --out /tmp/charts",
        "python visualize/report.py --all-documents --sort sha256      # read every document, sort by any field",
        "MEILI_INDEX=cats python visualize/report.py --dead-lettered 3"])
    p.add_argument("--index", help="MeiliSearch index to read (env MEILI_INDEX)")
    p.add_argument("--csv", type=Path, metavar="FILE",
                   help="read documents from this exported CSV instead of MeiliSearch")
    p.add_argument("--all-documents", action="store_true",
                   help="read every document instead of counting with facets (memory and time grow with the index; "
                   "--sort may then name any field)")
    p.add_argument("--mapreduce-dir", type=Path, default=DEFAULT_MAPREDUCE_DIR, metavar="DIR",
                   help="where the MapReduce part-* files are; the newest set below DIR is used")
    p.add_argument("--duplicates-dir", type=Path, default=DEFAULT_DUPLICATES_DIR, metavar="DIR",
                   help="output of `run_job.py --job duplicates`: its groups become a table and duplicates.png")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR", help="where the PNG files go")
    p.add_argument("--limit", type=int, default=10, help="rows of the recent-images table")
    p.add_argument("--sort", default="timestamp:desc", metavar="FIELD[:asc|desc]",
                   help="order of the recent-images table and of the previews (a sortable attribute of "
                   "INDEX_SETTINGS unless every document is read)")
    p.add_argument("--tablefmt", default="simple", choices=tabulate_formats, metavar="FORMAT",
                   help="tabulate table format: simple, github, grid, psql, plain, ...")
    p.add_argument("--dead-lettered", type=int, metavar="N", help="dead-lettered count for the totals")
    p.add_argument("--consumer-summary", type=Path, default=DEFAULT_CONSUMER_SUMMARY, metavar="FILE",
                   help='JSON object with "dead_lettered", read when present and --dead-lettered is not given')
    p.add_argument("--previews", type=int, default=MAX_PREVIEWS, metavar="N",
                   help=f"thumbnails in the preview grid, 0 to {MAX_PREVIEWS}, fetched from S3_BUCKET at "
                   "S3_ENDPOINT_URL (0 skips S3)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar while reading (default: when stderr is a terminal)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def read_index(settings: Settings, show_progress: bool | None):
    """Every document of the index as a frame, or None when the index does not exist."""
    from visualize.documents import to_frame

    reader = meili.DocumentReader(settings, settings.meili_index)
    bar = cli.progress(None, "reading documents", unit="doc", enabled=show_progress)
    reader.on_progress = lambda n: bar.update(n - bar.n)
    try:
        docs = list(reader)
    except meili.MeiliError as exc:
        if exc.kind == NOT_FOUND:  # nothing indexed yet: not an error
            return None
        raise meili.as_user_error(exc) from None
    finally:
        bar.close()
    return to_frame(docs)


def dead_lettered_count(explicit: int | None, summary_file: Path) -> int | None:
    if explicit is not None:
        return explicit
    if not summary_file.is_file():
        return None
    try:
        value = json.loads(summary_file.read_text(encoding="utf-8")).get("dead_lettered")
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("ignoring %s: not a JSON object (%s)", summary_file, exc)
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        log.warning("ignoring %s: \"dead_lettered\" is not an integer", summary_file)
        return None
    return value


@dataclass
class View:
    """What the tables and charts show: the counts, and the few documents shown one by one."""

    aggregates: object  # visualize.aggregates.Aggregates
    first: object  # DataFrame: documents in --sort order, as many as the table and previews need
    source: str
    frame: object = None  # DataFrame of every document, when they were all read
    read: int = 0  # documents read


def documents_view(frame, source: str, args) -> View:
    from visualize.aggregates import from_frame
    from visualize.tables import recent_images

    wanted = max(args.limit, args.previews * 3)
    return View(from_frame(frame, source), recent_images(frame, wanted, args.sort), source, frame, len(frame))


def index_view(settings: Settings, args) -> View | None:
    """Facet counts and the first documents by --sort; None when the index does not exist. An
    index that cannot count with facets is read document by document instead (and says so)."""
    from visualize import aggregates
    from visualize.documents import to_frame

    source = f"index {settings.meili_index!r}"
    if not args.all_documents:
        try:
            try:
                counts = aggregates.from_index(settings, settings.meili_index)
            except meili.MeiliError as exc:
                raise meili.as_user_error(exc) from None
        except aggregates.FacetsUnavailable as exc:
            print(cli.printable(f"warning: {source} cannot be counted with facets ({exc}); reading every document "
                                "instead. The consumer applies the index settings when it starts."), file=sys.stderr)
        else:
            if counts is None:
                return None
            wanted = max(args.limit, args.previews * 3)
            first = aggregates.top_documents(settings, settings.meili_index, args.sort, wanted) if counts.images else []
            return View(counts, to_frame(first), source, read=len(first))
    frame = read_index(settings, args.progress)
    return None if frame is None else documents_view(frame, source, args)


def print_tables(view: View, summary, args, dead_lettered: int | None) -> None:
    from visualize.tables import RECENT_COLUMNS, image_rows, render, summary_tables, totals

    counts = view.aggregates
    recent = view.first.head(args.limit)
    print(f"Most recent images ({len(recent):,} of {counts.images:,}, by {args.sort})")
    print(render(image_rows(recent), RECENT_COLUMNS, args.tablefmt))
    if summary is not None:
        for dimension, table in summary_tables(summary.frame, args.tablefmt):
            print(f"\nMapReduce summary by {dimension} ({summary.source})")
            print(table)
    sizes = counts.size_total_source or "bounds from the size bins"
    print()
    print(cli.printable(f"Totals (counts: {counts.source}; sizes: {sizes})"))
    print(render(totals(counts, dead_lettered), [], args.tablefmt))
    for note in counts.notes:
        print(cli.printable(f"note: {note}"), file=sys.stderr)


def write_charts(counts, summary, out: Path) -> list[tuple[Path, str]]:
    """(path, where its numbers came from) of each chart written."""
    from visualize import charts

    built = [(chart, counts.chart_sources.get(chart.name, counts.source))
             for chart in charts.distribution_charts(counts)]
    if summary is not None:
        built.append((charts.mapreduce_summary(summary.frame), f"MapReduce output {summary.source}"))
    written = []
    for chart, source in built:
        path = out / f"{chart.name}.png"
        chart.figure.savefig(path, dpi=charts.DPI)
        written.append((path, source))
    return written


def read_duplicates(settings: Settings, frame, args):
    """(groups, id -> document) of the duplicates job's output, or None when there is none."""
    from visualize import duplicates

    found = duplicates.find_output(args.duplicates_dir)
    if found is None:
        return None
    groups, skipped = duplicates.read_groups(found)
    if skipped:
        print(f"warning: {skipped} line(s) of {found} are not duplicate groups; left out", file=sys.stderr)
    shown = groups[:max(duplicates.MAX_GROUPS, duplicates.PICTURE_GROUPS)]
    if args.csv:
        by_id = {doc["id"]: doc for doc in frame.to_dict("records")}
        documents = {i: by_id[i] for g in shown for i in g.ids if i in by_id}
    else:
        index = meili.search_client(settings).index(settings.meili_index)

        def search(filter_: str, limit: int) -> list[dict]:
            try:
                with meili.errors("reading duplicate groups from", settings, settings.meili_index):
                    return index.search("", {"filter": filter_, "limit": limit})["hits"]
            except meili.MeiliError as exc:
                raise meili.as_user_error(exc) from None

        documents = duplicates.resolve(search, shown)
    return groups, documents, found


def print_duplicates(found, tablefmt: str) -> None:
    from visualize import duplicates
    from visualize.tables import human_size, render

    groups, documents, path = found
    total = duplicates.totals(groups, documents)
    print(f"\nDuplicate groups ({total['exact_groups']:,} exact, {total['near_groups']:,} near; "
          f"{total['images_in_groups']:,} images; exact copies could free "
          f"{human_size(total['reclaimable_bytes_exact'] / 1024)}; from {path})")
    if groups:
        print(render(duplicates.table_rows(groups, documents), ["kind", "images", "reclaimable", "files"], tablefmt))


def write_previews(settings: Settings, view: View, args) -> Path | None:
    """The thumbnail grid; None when no document had a readable thumbnail."""
    from visualize.previews import fetch_thumbnails, preview_grid

    # A few more candidates than slots, so a missing thumbnail is replaced, but a bucket
    # without any thumbnails is not probed document by document.
    candidates = view.first.head(args.previews * 3).to_dict("records")
    thumbs, skipped = fetch_thumbnails(s3.client(settings), settings.s3_bucket, candidates, args.previews)
    for skip in skipped:
        where = f" (s3://{settings.s3_bucket}/{skip.key})" if skip.key else ""
        print(cli.printable(f"warning: preview of {skip.file_name} skipped: {skip.reason}{where}"), file=sys.stderr)
    if not thumbs:
        print("no thumbnails to preview", file=sys.stderr)
        return None
    which = "most recent" if args.sort == "timestamp:desc" else f"first by {args.sort}"
    chart = preview_grid(thumbs, f"Processed thumbnails ({len(thumbs)} {which})")
    path = args.out / f"{chart.name}.png"
    with warnings.catch_warnings():
        # A file name with an emoji has no glyph in the bundled font: it is drawn as a box,
        # which is all a caption needs; the warning would only alarm the user.
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font")
        chart.figure.savefig(path, dpi=chart.figure.dpi)
    return path


def visualize(args) -> int:
    from visualize.aggregates import with_mapreduce
    from visualize.documents import read_csv
    from visualize.mapreduce_output import read_summary
    from visualize.previews import MAX_PREVIEWS
    from visualize.tables import parse_sort

    cli.check_ranges(args, {"limit": (1, None), "previews": (0, MAX_PREVIEWS), "dead_lettered": (0, None)})
    parse_sort(args.sort)
    settings = load_settings()
    settings = settings.with_options(args, {"index": "meili_index"})

    if args.csv:
        view = documents_view(read_csv(args.csv), str(args.csv), args)
    else:
        view = index_view(settings, args)
        if view is None:
            print(f"index {settings.meili_index!r} does not exist yet at {settings.meili_url}: nothing to show "
                  "(run the consumer first)")
            return cli.EXIT_OK
    if not view.aggregates.images:
        print(f"{view.source} has no documents: nothing to show")
        return cli.EXIT_OK

    summary = read_summary(args.mapreduce_dir)
    if summary is None:
        print(f"note: no MapReduce output under {args.mapreduce_dir}; its table and chart are left out",
              file=sys.stderr)
    view.aggregates = with_mapreduce(view.aggregates, summary)
    print_tables(view, summary, args, dead_lettered_count(args.dead_lettered, args.consumer_summary))
    duplicate_groups = read_duplicates(settings, view.frame, args)
    if duplicate_groups is not None:
        print_duplicates(duplicate_groups, args.tablefmt)

    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --out directory {args.out}: {exc.strerror}") from None
    print()
    written = write_charts(view.aggregates, summary, args.out)
    failed = False
    if args.previews:
        try:
            preview = write_previews(settings, view, args)
        except InfrastructureError as exc:
            print(f"error: {cli.printable(exc)}", file=sys.stderr)
            preview, failed = None, True
        if preview is not None:
            written.append((preview, f"{min(len(view.first), args.previews * 3)} documents by {args.sort}, "
                                     "thumbnails from S3"))
        if duplicate_groups is not None and duplicate_groups[0]:
            from visualize import duplicates

            try:
                chart = duplicates.picture(s3.client(settings), settings.s3_bucket, *duplicate_groups[:2])
                path = args.out / f"{chart.name}.png"
                chart.figure.savefig(path, dpi=chart.figure.dpi)
                written.append((path, f"duplicate groups of {duplicate_groups[2]}, thumbnails from S3"))
            except InfrastructureError as exc:
                print(f"error: {cli.printable(exc)}", file=sys.stderr)
                failed = True
    for path, source in written:
        print(cli.printable(f"wrote {path}  (numbers: {source})"))
    how = "every document read" if view.aggregates.method == "documents" else \
        f"MeiliSearch facets, {view.read:,} documents read"
    print(cli.printable(f"visualize: {view.aggregates.images:,} images from {view.source} ({how}), "
                        f"{len(written)} PNG file(s) in {args.out}"))
    return cli.EXIT_FAILURES if failed else cli.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    return cli.run(lambda: visualize(args))


if __name__ == "__main__":
    sys.exit(main())
