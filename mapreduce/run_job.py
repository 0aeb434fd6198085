"""Run a job over an exported CSV: the image-metadata summaries (mapper.py, reducer.py; the
default) or the duplicate groups (duplicates_*.py, two chained stages).

Runners:
  pipe    mapper | LC_ALL=C sort | reducer in subprocesses; fast, no Java
  hadoop  the real Hadoop Streaming 3.4 jar in local mode (jars fetched by Maven on first use)
  emr     a streaming step on an AWS EMR cluster (--cluster-id, or --create-cluster)

--output receives the `part-*` files as Hadoop writes them, `_SUCCESS`, and all part files
merged and sorted: `summary.tsv` (dimension, value, count, total_kb, min_kb, max_kb, mean_kb) or
`duplicates.tsv` (kind, group, size, ids), tab-separated; see mapreduce/README.md.

Exit status: 0 success, 1 the job failed (reason on stderr), 2 usage error.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from imgpipe import cli
from imgpipe.errors import InfrastructureError, UserError
from imgpipe.settings import load_settings
from mapreduce.runners.common import JobFailed, JobResult, JobSpec

log = logging.getLogger("mapreduce.run_job")

RUNNERS = ("pipe", "hadoop", "emr")
JOBS = ("summary", "duplicates")


def build_parser():
    from mapreduce.duplicates_reducer import DEFAULT_MAX_BUCKET, DEFAULT_THRESHOLD, MAX_THRESHOLD
    from mapreduce.runners.emr import (DEFAULT_INSTANCE_TYPE, DEFAULT_JOB_FLOW_ROLE, DEFAULT_RELEASE_LABEL,
                                       DEFAULT_SERVICE_ROLE)

    p = cli.parser("python mapreduce/run_job.py", __doc__, [
        "python mapreduce/run_job.py --runner pipe --input out/image_metadata.csv --output out/summary",
        "python mapreduce/run_job.py --runner hadoop --reducers 2 --input out/image_metadata.csv --output out/summary --overwrite",
        "python mapreduce/run_job.py --job duplicates --threshold 6 --input out/image_metadata.csv --output out/duplicates",
        "S3_ENDPOINT_URL= python mapreduce/run_job.py --runner emr --cluster-id j-2AXXXXXXGAPLF "
        "--input out/image_metadata.csv --output out/summary",
        "S3_ENDPOINT_URL= python mapreduce/run_job.py --runner emr --create-cluster --identity "
        "--input s3://my-bucket/data/image_metadata.csv --output out/identity",
    ])
    p.add_argument("--runner", choices=RUNNERS, default="pipe", help="where the job runs")
    p.add_argument("--job", choices=JOBS, default="summary",
                   help="summary: counts and sizes per format, hour, day, size bucket, faces; duplicates: "
                        "groups of images with the same sha256 (exact) or close pHashes (near)")
    dupes = p.add_argument_group("duplicates job")
    dupes.add_argument("--threshold", type=int, metavar="BITS",
                       help=f"near duplicates: pHashes at most this many bits apart, 0-{MAX_THRESHOLD} "
                            f"(default {DEFAULT_THRESHOLD}, measured: see mapreduce/README.md)")
    dupes.add_argument("--max-bucket", type=int, metavar="HASHES",
                       help=f"distinct pHashes one band bucket compares all pairs of; a bigger bucket is "
                            f"cut by more bits, and counted (default {DEFAULT_MAX_BUCKET}; 0 = no limit)")
    p.add_argument("--input", required=True,
                   help="the CSV from export_csv.py; for --runner emr also an s3:// URI")
    p.add_argument("--output", required=True, type=Path, help="folder for the part-* files (must not exist)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier job output in --output")
    p.add_argument("--reducers", type=int, default=1, help="reduce tasks (hadoop, emr)")
    p.add_argument("--identity", action="store_true",
                   help="run /bin/cat as mapper and reducer instead: a smoke test of the runner")
    p.add_argument("--mappers", type=int,
                   help="pipe: mapper processes, each on its own line-aligned part of the input "
                        "(default: one per 64 MiB, at most one per core)")
    p.add_argument("--split-size", type=int, metavar="BYTES",
                   help="hadoop: largest input split, to run several map tasks on a small file")
    emr = p.add_argument_group("emr runner (AWS credentials from the usual chain; region AWS_REGION, "
                               "bucket S3_BUCKET; S3_ENDPOINT_URL must be empty)")
    emr.add_argument("--cluster-id", help="run the step on this running cluster (j-...)")
    emr.add_argument("--create-cluster", action="store_true",
                     help="create a 1 master + 1 core cluster for this job and terminate it afterwards")
    emr.add_argument("--release-label", default=DEFAULT_RELEASE_LABEL, help="EMR release of a created cluster")
    emr.add_argument("--instance-type", default=DEFAULT_INSTANCE_TYPE, help="instance type of a created cluster")
    emr.add_argument("--service-role", default=os.environ.get("EMR_SERVICE_ROLE") or DEFAULT_SERVICE_ROLE,
                     help="EMR service role of a created cluster (env EMR_SERVICE_ROLE; `python -m deploy` "
                     "output EmrServiceRole)")
    emr.add_argument("--job-flow-role", default=os.environ.get("EMR_JOB_FLOW_ROLE") or DEFAULT_JOB_FLOW_ROLE,
                     help="instance profile of a created cluster's nodes (env EMR_JOB_FLOW_ROLE; deploy "
                     "output EmrJobFlowRole)")
    emr.add_argument("--subnet-id", default=os.environ.get("EMR_SUBNET_ID") or None,
                     help="subnet of a created cluster, default EMR's (env EMR_SUBNET_ID; deploy output EmrSubnetId)")
    emr.add_argument("--s3-prefix", help="S3 folder of this run in S3_BUCKET (default emr/runs/<time>-<id>/)")
    emr.add_argument("--poll-seconds", type=float, default=15.0, help="seconds between step status checks")
    emr.add_argument("--timeout-minutes", type=float, default=180.0, help="give up waiting after this long")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def summary_line(result: JobResult) -> str:
    rows = "?" if result.rows_in is None else str(result.rows_in)
    rate = (f" ({result.rows_in / result.seconds:,.0f} rows/s)"
            if result.rows_in and result.seconds > 0 else "")
    malformed = result.counters.get("malformed_rows")
    bad = f", {malformed} malformed rows skipped" if malformed else ""
    return (f"runner {result.runner}: {rows} rows in{bad}, {result.groups_out} groups out, "
            f"{result.seconds:.1f} s{rate}; output {result.output_dir}/ "
            f"({', '.join(p.name for p in result.parts)}, merged in {result.merged.name})")


def warnings(result: JobResult) -> list[str]:
    """What the user must know about a result that is not complete (giant buckets)."""
    uncompared = result.counters.get("uncompared_pairs")
    if not uncompared:
        return []
    return [f"warning: {result.counters.get('giant_buckets', 0)} band buckets held more than --max-bucket "
            f"distinct pHashes; {uncompared} pairs in them were not compared, so some near duplicates "
            "may be missing (see mapreduce/README.md, giant buckets)"]


def check_job_options(args) -> None:
    from mapreduce.duplicates_reducer import MAX_THRESHOLD

    if args.job != "duplicates" and (args.threshold is not None or args.max_bucket is not None):
        raise UserError("--threshold and --max-bucket are for --job duplicates")
    if args.job == "duplicates" and args.identity:
        raise UserError("--identity is a smoke test of the runner with /bin/cat; leave out --job duplicates")
    if args.threshold is not None and not 0 <= args.threshold <= MAX_THRESHOLD:
        raise UserError(f"--threshold takes 0 to {MAX_THRESHOLD} bits, not {args.threshold}")
    if args.max_bucket is not None and args.max_bucket < 0:
        raise UserError("--max-bucket takes a number of pHashes, 0 for no limit")
    cli.check_ranges(args, {"reducers": (1, None), "mappers": (1, None)})


def run(args) -> JobResult:
    spec = JobSpec(input=args.input, output_dir=args.output, reducers=args.reducers,
                   identity=args.identity, overwrite=args.overwrite, job=args.job,
                   threshold=args.threshold, max_bucket=args.max_bucket)
    check_job_options(args)
    if args.runner != "emr" and args.input.startswith("s3://"):
        raise UserError(f"--runner {args.runner} reads a local file; download {args.input} first")
    if args.runner != "emr" and (args.cluster_id or args.create_cluster):
        raise UserError("--cluster-id and --create-cluster are for --runner emr")
    if args.mappers is not None and args.runner != "pipe":
        raise UserError("--mappers is for --runner pipe (hadoop: --split-size)")
    if args.split_size is not None and (args.runner != "hadoop" or args.split_size < 1):
        raise UserError("--split-size takes a positive number of bytes and is for --runner hadoop")
    if args.runner == "pipe":
        from mapreduce.runners.pipe import run_pipe

        return run_pipe(spec, mappers=args.mappers)
    settings = load_settings()
    if args.runner == "hadoop":
        from mapreduce.runners.hadoop import run_hadoop

        stages = 2 if args.job == "duplicates" else 1
        with cli.progress(200 * stages, "hadoop map+reduce %", unit="%") as bar:
            def on_progress(map_pct: int, reduce_pct: int) -> None:
                bar.update(map_pct + reduce_pct - bar.n)

            return run_hadoop(spec, settings, split_size=args.split_size, on_progress=on_progress)
    from mapreduce.runners.emr import EmrOptions, run_emr

    options = EmrOptions(cluster_id=args.cluster_id, create_cluster=args.create_cluster,
                         release_label=args.release_label, instance_type=args.instance_type,
                         service_role=args.service_role, job_flow_role=args.job_flow_role,
                         subnet_id=args.subnet_id,
                         s3_prefix=args.s3_prefix, poll_seconds=args.poll_seconds,
                         timeout_seconds=args.timeout_minutes * 60)
    return run_emr(spec, settings, options)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)

    def body() -> int:
        try:
            result = run(args)
        except JobFailed as exc:
            print(f"error: job failed: {exc}", file=sys.stderr)
            return cli.EXIT_FAILURES
        except InfrastructureError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return cli.EXIT_FAILURES
        print(summary_line(result))
        for warning in warnings(result):
            print(warning, file=sys.stderr)
        return cli.EXIT_OK

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
