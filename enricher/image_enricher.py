#!/usr/bin/env python3
"""Enrich indexed images with what models find in them: faces (YuNet: `faces`, `face_boxes`) and
text (PP-OCR: `text`, `text_lines`, `text_chars`), added to the documents the consumer indexed.

Consumes the consumer's announcements (KAFKA_INDEXED_TOPIC, sent once MeiliSearch confirmed a
document) in its own consumer group (KAFKA_ENRICHER_GROUP; one group per model set, so a slow
model never holds back another), and the backfill's (KAFKA_BACKFILL_TOPIC) in a second group,
read only when no new upload waits. Models run in worker processes under the consumer's budgets
(PROCESSING_TIMEOUT_SECONDS, MAX_DECODE_BYTES, WORKER_MEMORY_MB). A document deleted or replaced
meanwhile is never re-created nor given an older version's fields (enricher/writer.py). What
fails goes to KAFKA_ENRICHER_DEAD_LETTER_TOPIC with a reason; offsets are committed after the
MeiliSearch task succeeded.

--backfill announces every document lacking the current enrichment_version on
KAFKA_BACKFILL_TOPIC at --rate per second (progress and ETA), then exits; run the enricher to
work through it.

Exit status: 0 stopped cleanly, 1 a service failed at start-up, 2 usage or settings error,
130 stopped by a second signal.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from imgpipe import cli
from imgpipe.errors import UserError
from imgpipe.settings import load_settings

log = logging.getLogger("enricher")

MODEL_CHOICES = ("faces", "text")


def build_parser():
    p = cli.parser("enricher/image_enricher.py", __doc__, [
        "python enricher/image_enricher.py                         # faces and text, until stopped",
        "python enricher/image_enricher.py --only faces --max-idle-seconds 10   # group image-enricher-faces",
        "python enricher/image_enricher.py --backfill --rate 50    # announce what lacks the current enrichment",
        "python enricher/image_enricher.py --metrics-port 9465     # Prometheus metrics on 127.0.0.1:9465"])
    p.add_argument("--only", choices=MODEL_CHOICES,
                   help="run one model, in its own group (KAFKA_ENRICHER_GROUP plus -faces or -text)")
    p.add_argument("--workers", type=int, help="model worker processes (env CONSUMER_WORKERS; 0 = one per core)")
    p.add_argument("--batch-size", type=int, default=16, help="announcements per batch at most")
    p.add_argument("--group", help="consumer group id (env KAFKA_ENRICHER_GROUP; the backfill lane adds -backfill)")
    p.add_argument("--topic", help="announcements to consume (env KAFKA_INDEXED_TOPIC)")
    p.add_argument("--index", help="MeiliSearch index (env MEILI_INDEX)")
    p.add_argument("--max-idle-seconds", type=float, metavar="S",
                   help="exit once no announcement has arrived for S seconds (batch runs)")
    p.add_argument("--status-interval", type=float, default=10.0, metavar="S", help="seconds between status lines")
    p.add_argument("--summary-json", type=Path, help="also write the final summary to this JSON file")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus metrics on http://127.0.0.1:PORT/metrics (env METRICS_PORT; 0 = off)")
    p.add_argument("--backfill", action="store_true",
                   help="announce the documents lacking the current enrichment on KAFKA_BACKFILL_TOPIC, then exit")
    p.add_argument("--rate", type=float, default=20.0, help="with --backfill: announcements per second at most")
    p.add_argument("--limit", type=int, help="with --backfill: announce at most this many")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: when stderr is a terminal)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


# Command-line option (argparse dest) -> the setting it overrides.
OPTION_SETTINGS = {"workers": "consumer_workers", "group": "kafka_enricher_group", "topic": "kafka_indexed_topic",
                   "index": "meili_index", "metrics_port": "metrics_port"}


def _settings(args):
    # Checked as the environment is: a bad option is named with the variable behind it.
    settings = load_settings(require_meili_key=True).with_options(args, OPTION_SETTINGS)
    cli.check_ranges(args, {"batch_size": (1, None), "limit": (1, None)})
    if not args.rate > 0:
        raise UserError("--rate must be a positive number of announcements per second")
    if args.only and args.group is None:
        # One group per model set: a faces-only enricher must not take a full one's announcements.
        settings = settings.with_overrides(kafka_enricher_group=f"{settings.kafka_enricher_group}-{args.only}")
    if not settings.kafka_indexed_topic:
        raise UserError("KAFKA_INDEXED_TOPIC is empty: the consumer announces nothing for the enricher to read")
    return settings


def backfill(args, settings, models) -> int:
    from enricher.backfill import run_backfill
    from enricher.work import ENRICHMENT_VERSION, current_versions

    versions = ({name: v for name, v in current_versions().items() if name.startswith(args.only)}
                if args.only else {"enrichment_version": ENRICHMENT_VERSION})
    bar = cli.progress(None, "announced", unit="doc", enabled=args.progress)
    import threading

    from consumer.image_consumer import install_signal_handlers

    stop = threading.Event()
    install_signal_handlers(stop)
    try:
        stats = run_backfill(settings, versions, args.rate, stop, limit=args.limit, on_progress=bar.update,
                             status_interval=args.status_interval)
    finally:
        bar.close()
    print(f"backfill: scanned {stats.scanned} documents of {settings.meili_index}, announced {stats.announced} "
          f"lacking {', '.join(f'{k} {v}' for k, v in versions.items())} on {settings.kafka_backfill_topic} "
          f"in {stats.seconds:.1f} s", file=sys.stderr)
    cli.write_summary_json(args.summary_json, vars(stats))
    return cli.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)

    def body() -> int:
        settings = _settings(args)
        models = (args.only,) if args.only else MODEL_CHOICES
        if args.backfill:
            return backfill(args, settings, models)
        workers = settings.consumer_workers or os.cpu_count() or 1
        from consumer.image_consumer import install_signal_handlers
        from enricher.loop import Enricher
        from imgpipe.retry import Stopped

        metrics = None
        if settings.metrics_port:
            from imgpipe.metrics import EnricherMetrics, serve

            metrics = EnricherMetrics()
            serve(metrics.registry, settings.metrics_port)
        bar = cli.progress(None, "announcements", unit="msg", enabled=args.progress)
        runner = Enricher(settings, models, workers, settings.kafka_enricher_group, batch_size=args.batch_size,
                          max_idle_seconds=args.max_idle_seconds, status_interval=args.status_interval,
                          metrics=metrics, on_batch=bar.update)
        install_signal_handlers(runner.stop)
        log.info("enriching (%s) from %s as group %s with %d worker(s); index %s", ", ".join(models),
                 settings.kafka_indexed_topic, settings.kafka_enricher_group, workers, settings.meili_index)
        try:
            stats = runner.run()
        except Stopped:
            print("enricher: stopped before start-up finished (a service was unreachable)", file=sys.stderr)
            return cli.EXIT_OK
        finally:
            bar.close()
        summary = stats.as_dict()
        print(f"enricher: {stats.line()}; {summary['seconds']:.1f} s"
              + "".join(f"\n  {model}: {ms} ms of CPU per image" for model, ms in
                        summary["model_cpu_ms_per_image"].items())
              + "".join(f"\n  skipped ({reason}): {n}" for reason, n in sorted(stats.skipped.items()))
              + "".join(f"\n  dead-lettered at {stage}: {n}" for stage, n in sorted(stats.dead_letter_reasons.items())),
              file=sys.stderr)
        cli.write_summary_json(args.summary_json, summary)
        return cli.EXIT_OK

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
