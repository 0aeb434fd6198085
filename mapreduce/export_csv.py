"""Export every document of the MeiliSearch index to a CSV for the MapReduce job.

One header row, then one row per image, columns in imgpipe.document.EXPORT_COLUMNS order (FIELDS and the enrichment fields). Values are
CSV-quoted where needed, so keys with commas, quotes, tabs, `;`, `&`, `=` or any unicode come
through unchanged. CR and LF inside text are written as the two characters `\\r` and `\\n`:
Hadoop splits its input on line ends before any CSV parser sees it, so a quoted newline would
tear a row in two (the `id` column still names the exact object).

Documents are read page by page through the documents API, with the search-only key when it
may read documents (a key with the `documents.get` action), else the admin key: the default
search key may only search, and search results stop at maxTotalHits (1000 by default).
"""
from __future__ import annotations

import csv
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Iterable

from imgpipe import cli, meili, s3
from imgpipe.document import EXPORT_COLUMNS
from imgpipe.errors import NOT_FOUND, UserError
from imgpipe.settings import Settings, load_settings

log = logging.getLogger("mapreduce.export_csv")

COLUMNS: tuple[str, ...] = EXPORT_COLUMNS
CSV_NAME = "image_metadata.csv"
PAGE_SIZE = 1000


def cell(value) -> str:
    """One document value as CSV cell text (before quoting)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True)
    text = str(value)
    if "\r" in text or "\n" in text:
        text = text.replace("\r", "\\r").replace("\n", "\\n")
    return text


def to_row(document: dict) -> list[str]:
    return [cell(document.get(name)) for name in COLUMNS]


def write_csv(documents: Iterable[dict], out) -> int:
    """Write the header and one row per document to a text file; returns the row count."""
    # LF line ends: Hadoop, `sort` and `cut` all want one; QUOTE_MINIMAL keeps numbers bare.
    writer = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(COLUMNS)
    rows = 0
    for document in documents:
        writer.writerow(to_row(document))
        rows += 1
    return rows


def export(settings: Settings, out_path: Path, show_progress: bool | None = None,
           page_size: int = PAGE_SIZE) -> tuple[int, int | None, str]:
    """Write the index to `out_path` (atomically: a partial file never has the final name).
    Returns (rows written, documents the index reported, key used)."""
    reader = meili.DocumentReader(settings, settings.meili_index, fields=list(COLUMNS),
                                  fallback_to_indexing_key=True, page_size=page_size)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.part")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as out, \
                cli.progress(None, "exporting", unit="doc", enabled=show_progress) as bar:
            def counted():
                for document in reader:
                    if bar.total is None and reader.total is not None:
                        bar.total = reader.total
                    bar.update(1)
                    yield document

            rows = write_csv(counted(), out)
        tmp.replace(out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return rows, reader.total, reader.method


def upload(settings: Settings, path: Path, key: str | None = None) -> str:
    """Upload the CSV to s3://<S3_BUCKET>/<key> (default S3_EXPORT_PREFIX + image_metadata.csv);
    returns the URI. A key under S3_RAW_PREFIX is refused: the producer would announce it."""
    key = settings.s3_export_prefix + CSV_NAME if key is None else key
    if key.startswith(settings.s3_raw_prefix):
        raise UserError(f"--s3-key {key!r} is under S3_RAW_PREFIX ({settings.s3_raw_prefix!r}): the pipeline "
                        "would process its own export; choose another key")
    return s3.upload_file(s3.client(settings), path, settings.s3_bucket, key, "text/csv; charset=utf-8")


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("python mapreduce/export_csv.py", __doc__, [
        "python mapreduce/export_csv.py --out out/image_metadata.csv",
        "python mapreduce/export_csv.py --out out/image_metadata.csv --upload   # also to s3://$S3_BUCKET/$S3_EXPORT_PREFIX",
        "MEILI_INDEX=test_images python mapreduce/export_csv.py --out /tmp/test.csv",
    ])
    p.add_argument("--out", required=True, type=Path, help="CSV file to write")
    p.add_argument("--index", help="MeiliSearch index to export (env MEILI_INDEX; default image_metadata)")
    p.add_argument("--upload", action="store_true",
                   help="also upload the CSV to s3://<S3_BUCKET>/<--s3-key> (env S3_BUCKET, S3_ENDPOINT_URL)")
    p.add_argument("--s3-key", help=f"object key of the upload (default: S3_EXPORT_PREFIX + {CSV_NAME}, "
                                   "data/image_metadata.csv)")
    p.add_argument("--page-size", type=int, default=PAGE_SIZE, help="documents per request")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    cli.setup_logging(args.verbose)

    def body() -> int:
        settings = load_settings()
        if not settings.reading_key:  # the readers' key (search, documents.get) is all it needs
            raise UserError("invalid settings:\n  - MEILI_SEARCH_KEY (a key that may read documents) or "
                            "MEILI_ADMIN_KEY is not set; `make up` generates them for the local stack")
        settings = settings.with_options(args, {"index": "meili_index"})
        cli.check_ranges(args, {"page_size": (1, None)})
        if args.upload and args.s3_key is not None and args.s3_key.startswith(settings.s3_raw_prefix):
            upload(settings, args.out, args.s3_key)  # refuses it, before the export runs
        if args.out.is_dir():
            raise UserError(f"--out {args.out} is a directory; give a file name")
        started = time.monotonic()
        try:
            rows, total, method = export(settings, args.out, page_size=args.page_size)
        except meili.MeiliError as exc:
            if exc.kind == NOT_FOUND:
                raise UserError(f"MeiliSearch has no index {settings.meili_index!r} (MEILI_INDEX); "
                                "run the consumer first or pick another") from None
            raise meili.as_user_error(exc, "MEILI_SEARCH_KEY with documents.get, or MEILI_ADMIN_KEY") from None
        where = str(args.out)
        if args.upload:
            where += " and " + upload(settings, args.out, args.s3_key)
        print(f"exported {rows} documents of index {settings.meili_index} (it reports {total}) "
              f"to {where} in {time.monotonic() - started:.1f} s, read through the {method}")
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
