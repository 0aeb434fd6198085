#!/usr/bin/env python3
"""Compare the bucket and the index, and repair both ways, after an outage or a restore.

Lists every object under S3_RAW_PREFIX and every document of MEILI_INDEX (ids, keys and etags
only, with the search-only key: memory grows by about 200 bytes per image), then sends events
to KAFKA_TOPIC, so the consumer repairs the index in order with everything else it receives:

- an object with no document, or whose document has another ETag (changed since): an upsert
  event, the image is processed again;
- a document whose object is gone: a delete event, the consumer removes the document and its
  derived images.

--dry-run lists what it would send and sends nothing. Running it twice is harmless: an upsert
replaces a document by its id, a delete of a deleted document does nothing.

--every SECONDS runs it on a timer, beside a producer fed by bucket notifications, to find what
they missed (an S3 server such as versitygw sends each notification once, and drops it when Kafka
is down). After its first full pass it re-announces only objects modified since the previous pass
began (less a minute), so an object that is dead-lettered (a broken file) is not sent again and
again; documents whose object is gone are always deleted.

Settings from the environment and .env: S3_BUCKET, S3_RAW_PREFIX, S3_ENDPOINT_URL, MEILI_URL,
MEILI_SEARCH_KEY, MEILI_INDEX, KAFKA_BOOTSTRAP_SERVERS, KAFKA_TOPIC.
Exit status: 0 in agreement or repaired, 1 some event was not delivered or a service failed,
2 usage or settings error.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from imgpipe import cli, kafka, meili, s3
from imgpipe.document import document_id
from imgpipe.errors import NOT_FOUND, UserError
from imgpipe.events import ImageEvent, event_for_object, utc_now_iso
from imgpipe.settings import Settings, load_settings


@dataclass
class Differences:
    missing_documents: list[dict] = field(default_factory=list)  # listing entries without a document
    changed: list[dict] = field(default_factory=list)  # listing entries whose document has another ETag
    orphans: list[dict] = field(default_factory=list)  # documents whose object is gone
    objects: int = 0
    documents: int = 0


def compare(objects, documents, bucket: str, prefix: str) -> Differences:
    """The differences between a listing (ListObjectsV2 entries) and documents (id, key, etag, bucket)."""
    found = Differences()
    indexed: dict[str, dict] = {}
    for doc in documents:
        found.documents += 1
        if doc.get("bucket") == bucket and str(doc.get("key", "")).startswith(prefix):
            indexed[doc["id"]] = doc
    for obj in objects:
        found.objects += 1
        doc = indexed.pop(document_id(bucket, obj["Key"]), None)
        if doc is None:
            found.missing_documents.append(obj)
        elif (doc.get("etag") or "").strip('"') != str(obj.get("ETag", "")).strip('"'):
            found.changed.append(obj)
    found.orphans = list(indexed.values())
    return found


def build_parser() -> argparse.ArgumentParser:
    return cli.parser("producer/reconcile.py", __doc__, [
        "python producer/reconcile.py --dry-run        # what disagrees, nothing sent",
        "python producer/reconcile.py                  # announce what is missing, delete what is gone",
        "python producer/reconcile.py --no-deletes     # only re-announce objects without a document",
        "python producer/reconcile.py --every 600      # every 10 minutes: what bucket notifications missed"])


# An object written just before a pass began may be listed by it, or only by the next one.
SINCE_MARGIN = timedelta(seconds=60)


def recent(found: Differences, since: datetime | None) -> int:
    """Keep only objects modified since `since` among those to re-announce; returns how many were left out."""
    if since is None:
        return 0
    before = len(found.missing_documents) + len(found.changed)
    found.missing_documents = [o for o in found.missing_documents if o["LastModified"] >= since]
    found.changed = [o for o in found.changed if o["LastModified"] >= since]
    return before - len(found.missing_documents) - len(found.changed)


def reconcile(args, since: datetime | None = None) -> int:
    settings: Settings = load_settings()
    bucket, prefix = settings.s3_bucket, settings.s3_raw_prefix
    started = time.monotonic()
    reader = meili.DocumentReader(settings, settings.meili_index, fields=["id", "bucket", "key", "etag"])
    try:
        documents = list(reader)
    except meili.MeiliError as exc:
        if exc.kind != NOT_FOUND:
            raise meili.as_user_error(exc) from None
        documents = []  # no index yet: every object is missing its document
    try:
        with cli.progress(None, "listing", unit="obj", enabled=args.progress) as bar:
            def listed():
                for obj in s3.list_objects(s3.client(settings), bucket, prefix):
                    bar.update(1)
                    yield obj

            found = compare(listed(), documents, bucket, prefix)
    except s3.S3Error as exc:
        if exc.missing_bucket:
            raise UserError(f"bucket {bucket!r} does not exist") from None
        raise
    older = recent(found, since)
    upserts = [event_for_object(bucket, obj) for obj in found.missing_documents + found.changed]
    deletes = [] if args.no_deletes else [ImageEvent.deletion(doc["bucket"], doc["key"], utc_now_iso())
                                          for doc in found.orphans]
    line = (f"reconcile: {found.objects:,} objects under s3://{bucket}/{prefix}, {found.documents:,} documents; "
            f"{len(found.missing_documents):,} without a document, {len(found.changed):,} changed, "
            f"{len(found.orphans):,} documents whose object is gone"
            + (f" ({older:,} objects without a document or changed, unmodified since the last pass, left out)"
               if older else ""))
    if args.dry_run:
        for event in upserts + deletes:
            print(f"{event.action}\t{cli.printable(event.key)}")
        print(f"{line}; dry run: would send {len(upserts):,} upsert and {len(deletes):,} delete events",
              file=sys.stderr)
        return cli.EXIT_OK
    if not upserts and not deletes:
        print(f"{line}; nothing to repair ({time.monotonic() - started:.1f} s)", file=sys.stderr)
        return cli.EXIT_OK
    from producer.sender import EventSender

    kafka.check_topic(settings, settings.kafka_topic)
    sender = EventSender(settings)
    for event in upserts + deletes:
        sender.send(event)
    sender.flush(timeout=120)
    report = sender.report
    for error in report.errors:
        print(f"error: delivery failed: {cli.printable(error)}", file=sys.stderr)
    print(f"{line}; sent {report.sent:,} events ({len(upserts):,} upserts, {len(deletes):,} deletes), "
          f"{report.failed:,} failed, in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return cli.EXIT_FAILURES if report.failed else cli.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    p.add_argument("--dry-run", action="store_true", help="list what disagrees; send nothing")
    p.add_argument("--no-deletes", action="store_true", help="do not send delete events for documents whose "
                                                             "object is gone")
    p.add_argument("--every", type=float, metavar="SECONDS",
                   help="run again every SECONDS until stopped (SIGTERM or Ctrl-C); after the first pass only "
                        "objects modified since the previous one are re-announced")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: when stderr is a terminal)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    cli.setup_logging(args.verbose)
    if args.every is None:
        return cli.run(lambda: reconcile(args))
    if not args.every > 0 or args.dry_run:
        print("error: --every needs a positive number of seconds, and no --dry-run", file=sys.stderr)
        return cli.EXIT_USAGE
    return every(args)


def every(args) -> int:
    """Reconcile on a timer. A pass that failed (an event not delivered, a service down) does not
    move `since`: the next pass looks as far back again."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    since, worst = None, cli.EXIT_OK
    while not stop.is_set():
        began = datetime.now(timezone.utc)
        code = cli.run(lambda: reconcile(args, since))
        if code == cli.EXIT_USAGE:
            return code  # a settings mistake does not fix itself
        if code == cli.EXIT_OK:
            since = began - SINCE_MARGIN
        worst = max(worst, code)
        stop.wait(args.every)
    return worst


if __name__ == "__main__":
    sys.exit(main())
