"""`make bench`: throughput, scaling, latency and memory against their floors, in one run.

Each figure is divided by a floor measured in the same run on the same machine (decoding
alone, the consumer's processing from memory, one document per request, a bare produce loop,
cut | sort | uniq -c), so the ratios hold on any machine. Runs on the local stack (started if
it is down, left running) with a generated corpus: 500 photo-like 1280x960 JPEGs, 100 smaller
JPEGs and PNGs, the demo corpus's face photos and the awkward samples with three
decompression bombs. The upload latency (PUT -> searchable) goes through the local S3 server's
own bucket notifications in Kafka and the producer's notifications mode. The sizing step
(`--only sizing`) measures images per core with the consumer's default configuration and
MeiliSearch's indexing ceiling, for the README's sizing table of the AWS consumer fleet. The
enrichment step (bench/enrichment.py) measures the face table (Haar against YuNet), OCR error
rates and the models' CPU in memory. Prints a table and writes results.json; the run's topics,
indexes and S3 objects are deleted at the end. Takes about 16 minutes on 2 cores (the enrichment
and duplicates steps are half of it), plus a minute the first time to write the 1,000,000-row
MapReduce input and a few more to index the 100,000 and 1,000,000 documents report.py runs on
(kept in the local MeiliSearch for later runs; --quick: about 3 minutes).

Settings come from the environment and .env like every script (KAFKA_*, S3_*, MEILI_*,
CONSUMER_BATCH_SIZE and CONSUMER_BATCH_MS for the consumer runs, LOCAL_STATE_DIR for the
cached MapReduce input).

Exit status: 0 every figure measured (targets met or not), 1 some step failed,
2 usage or settings error.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from imgpipe import cli
from imgpipe.errors import UserError
from imgpipe.settings import REPO_ROOT

DEFAULT_OUT = REPO_ROOT / "bench" / "results.json"


def build_parser():
    p = cli.parser("python -m bench", __doc__, [
        "make bench                                  # the full run, about 16 minutes",
        "python -m bench --quick --out /tmp/r.json    # a handful of images: checks the harness",
        "CONSUMER_BATCH_MS=100 python -m bench --only in_memory --only pipelines",
        "python -m bench --photos 120 --only sizing   # images per core and MeiliSearch's ceiling",
        "python -m bench --keep-logs /tmp/b --profile  # keep logs; profile the pipeline consumers"])
    p.add_argument("--quick", action="store_true", help="tiny corpus and sizes, no Hadoop: checks the harness")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where results.json goes")
    p.add_argument("--photos", type=int, help="photo-like 1280x960 JPEGs in the corpus (default 500)")
    p.add_argument("--mapreduce-rows", type=int, help="rows of the MapReduce input (default 1,000,000)")
    p.add_argument("--visualize-documents", metavar="SMALL,LARGE",
                   help="documents in the two indexes report.py runs on (default 100000,1000000)")
    p.add_argument("--hadoop", action=argparse.BooleanOptionalAction, default=None,
                   help="run the Hadoop local runner (default: yes, unless --quick or no Java)")
    p.add_argument("--keep-logs", type=Path, metavar="DIR",
                   help="write the producer and consumer logs and summaries here (default: a temporary folder)")
    from bench.run import GROUPS

    p.add_argument("--only", action="append", choices=GROUPS,
                   help="run just these steps (repeatable); results.json then holds just their figures")
    p.add_argument("--profile", action="store_true",
                   help="run the pipeline consumers under pyinstrument (main thread); reports go to --keep-logs")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown (for the README)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (default: when stderr is a terminal)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def config_from(args):
    from bench.run import FULL, QUICK

    config = QUICK if args.quick else FULL
    cli.check_ranges(args, {"photos": (1, None), "mapreduce_rows": (1, None)})
    if args.photos is not None:
        config = replace(config, corpus=replace(config.corpus, photos=args.photos))
    if args.mapreduce_rows is not None:
        config = replace(config, mapreduce_rows=args.mapreduce_rows)
    if args.visualize_documents is not None:
        try:
            small, large = (int(n) for n in args.visualize_documents.split(","))
        except ValueError:
            raise UserError("--visualize-documents takes two whole numbers, SMALL,LARGE") from None
        if not 1 <= small < large:
            raise UserError("--visualize-documents: SMALL must be at least 1 and below LARGE")
        config = replace(config, visualize_documents=(small, large))
    if args.hadoop is not None:
        config = replace(config, hadoop=args.hadoop)
    return config


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)

    def body() -> int:
        from consumer.imageguard import apply_decoder_limits
        from stack.lifecycle import ensure_running
        from stack.services import StackError

        config = config_from(args)
        if args.profile and not args.keep_logs:
            raise UserError("--profile writes its reports next to the logs: give --keep-logs DIR too")
        if args.profile and importlib.util.find_spec("pyinstrument") is None:
            raise UserError("--profile needs pyinstrument (requirements-dev.txt): make venv")
        try:
            settings, started = ensure_running()
        except StackError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return cli.EXIT_FAILURES
        # Before cv2 loads: the decode floor decodes the corpus's bombs with bare cv2.imdecode,
        # which only OpenCV's own ceiling stops from allocating gigabytes.
        apply_decoder_limits(settings.max_image_pixels)
        from bench.figures import table, write_results
        from bench.run import Bench

        if started:
            print(f"started {', '.join(s.name for s in started)} (still running afterwards; `make down` stops them)",
                  file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="imgpipe-bench-") as tmp:
            work = args.keep_logs or Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            bench = Bench(settings, config, work, show_progress=args.progress, profile=args.profile,
                          only=set(args.only) if args.only else None)
            figures = bench.run()
        write_results(args.out, figures)
        print(table(figures, "github" if args.markdown else "simple"))
        print(f"\nbench ({config.label}): {len(figures)} figures, "
              f"{sum(1 for f in figures if f.value is None)} missing; wrote {args.out}", file=sys.stderr)
        for failure in bench.failures:
            print(f"  failed: {failure}", file=sys.stderr)
        return cli.EXIT_FAILURES if bench.failures else cli.EXIT_OK

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
