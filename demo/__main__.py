"""`make demo`: the whole pipeline on the local stack, end to end, with a summary at the end.

Starts the local stack (installing it on first run), seeds a deterministic demo corpus into
S3 (captchas, real photos, several formats and sizes, and a few broken files), runs the
producer, drains the topic with the consumer, exports the index to CSV, runs the MapReduce
job (real Hadoop in local mode when Java is present, else the shell pipe), and draws the
tables, charts and previews. It ends in real time: a few uploads with a plain S3 client while
the producer reads the S3 server's bucket notifications and the consumer runs, each upload's
time to searchable, and a delete that leaves the index (then the other uploads are deleted
too). The stack stays up afterwards; `make down` stops it.

Exit status: 0 every step worked and the numbers agree, 1 a step failed or they disagree,
2 usage or settings error.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from imgpipe import cli
from imgpipe.settings import REPO_ROOT


def build_parser():
    p = cli.parser("python -m demo", __doc__, [
        "make demo",
        "python -m demo --count 500 --runner pipe",
        "python -m demo --out /tmp/demo"])
    p.add_argument("--count", type=int, default=300, help="images in the demo corpus")
    p.add_argument("--seed", type=int, default=0, help="seed of the demo corpus")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "out", help="folder for CSV, MapReduce output and charts")
    p.add_argument("--runner", choices=["auto", "pipe", "hadoop"], default="auto",
                   help="MapReduce runner; auto = hadoop when Java and Maven are present, else pipe")
    return p


def check(report) -> list[str]:
    """The numbers the steps reported must agree with each other."""
    problems = []
    if report.produced < report.uploaded:
        problems.append(f"produced {report.produced} events for {report.uploaded} uploaded images")
    if report.indexed + report.dead_lettered < report.produced:
        problems.append(f"consumed fewer images ({report.indexed} + {report.dead_lettered} dead-lettered) "
                        f"than produced ({report.produced})")
    if report.dead_lettered != len(report.dead_letters):
        problems.append(f"consumer reported {report.dead_lettered} dead letters, the topic has "
                        f"{len(report.dead_letters)} new ones")
    if report.exported_rows != report.index_documents:
        problems.append(f"exported {report.exported_rows} rows of {report.index_documents} documents")
    if report.mapreduce_format_count != report.exported_rows:
        problems.append(f"MapReduce counted {report.mapreduce_format_count} images of {report.exported_rows} rows")
    if report.planted_groups_found != report.planted_groups:
        problems.append(f"the duplicates job found {report.planted_groups_found} of the {report.planted_groups} "
                        "planted groups of near-duplicates")
    return problems


def print_summary(report, settings) -> None:
    from tabulate import tabulate

    def num(value, unit="", digits=2):
        return "-" if value is None else f"{value:.{digits}f}{unit}"

    rows = [
        ("images found (uploaded and announced)", f"{report.produced}"),
        ("indexed in this run", f"{report.indexed}"),
        ("documents in the index", f"{report.index_documents}"),
        ("dead-lettered", f"{report.dead_lettered}"),
        ("throughput", num(report.images_per_second, " images/s", 1)),
        # Every event is produced at once, so this includes waiting in the backlog;
        # `make bench` measures it at a steady rate.
        ("latency produce -> searchable, p50 (backlog)", num(report.latency_p50_s, " s")),
        ("latency produce -> searchable, p95 (backlog)", num(report.latency_p95_s, " s")),
        ("MapReduce", f"{report.mapreduce_runner} runner, {report.mapreduce_seconds:.1f} s"),
        ("enriched (faces, text)", f"{report.enriched}, {report.enricher_dead_lettered} dead-lettered"),
    ]
    if report.live is not None and report.live.uploads:
        # Uploads with a plain S3 client, one at a time: versitygw's notification -> producer -> consumer.
        seconds = sorted(s for _, s in report.live.uploads)
        rows += [("real time: PUT -> searchable, median (S3 notifications)", num(seconds[len(seconds) // 2], " s")),
                 ("real time: PUT -> searchable, slowest", num(seconds[-1], " s")),
                 ("real time: DELETE -> gone from the index", num(report.live.delete_s, " s"))]
    print("\n" + "=" * 72)
    print("demo summary")
    print(tabulate(rows, tablefmt="simple"))
    if report.dead_letters:
        print("\ndead letters (topic %s):" % settings.kafka_dead_letter_topic)
        print(tabulate([(cli.printable(key), cli.printable(reason)) for key, reason in report.dead_letters],
                       headers=["key", "reason"], tablefmt="simple", maxcolwidths=[40, 70]))
    if report.duplicate_groups:
        print(f"\nduplicate groups ({report.planted_groups_found} of {report.planted_groups} planted ones found):")
        print(tabulate([(kind, size, cli.printable(", ".join(k.rsplit("/", 1)[-1] for k in keys[:5])
                                                   + (" …" if size > 5 else "")))
                        for kind, size, keys in report.duplicate_groups[:12]],
                       headers=["kind", "images", "files"], tablefmt="simple", maxcolwidths=[None, None, 80]))
    print(f"\nimages with faces (YuNet): {len(report.with_faces)}")
    if report.with_faces:
        print(tabulate([(cli.printable(key), faces) for key, faces in report.with_faces[:15]],
                       headers=["key", "faces"], tablefmt="simple", maxcolwidths=[70, None]))
        if len(report.with_faces) > 15:
            print(f"  … and {len(report.with_faces) - 15} more")
    print(f"\nsearch for {report.text_word!r}, a word found only inside an image:")
    if report.text_hits:
        print(tabulate([(cli.printable(key), cli.printable(line)) for key, line in report.text_hits],
                       headers=["key", "line read in the image"], tablefmt="simple"))
    else:
        print("  no image (the enricher read no such word)")
    print("\nsteps:")
    print(tabulate([(name, f"{sec:.1f} s") for name, sec in report.steps], tablefmt="simple"))
    print("\ncharts:")
    for chart in report.charts:
        print(f"  {chart}")
    print(f"\nThe stack keeps running. Try:\n"
          f"  .venv/bin/python visualize/search.py photo --filter 'faces > 0' --sort timestamp:desc\n"
          f"  .venv/bin/python visualize/search.py invoice      # words read inside the images\n"
          f"  kcat -b {settings.kafka_bootstrap_servers} -L\n"
          f"  make dashboard    # then open http://127.0.0.1:8888/ in a browser: search, charts, dead letters\n"
          f"and `make down` to stop it.")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging()

    def body() -> int:
        from demo.run import StepFailed, default_runner, run_demo
        from stack.lifecycle import ensure_running
        from stack.services import StackError

        cli.check_ranges(args, {"count": (1, None)})
        runner = default_runner() if args.runner == "auto" else args.runner
        print("==> starting the local stack (first run installs it)", file=sys.stderr, flush=True)
        try:
            settings, _ = ensure_running()
        except StackError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return cli.EXIT_FAILURES
        try:
            report = run_demo(settings, args.count, args.out, runner, seed=args.seed)
        except StepFailed as exc:
            print(f"\ndemo failed: {exc}", file=sys.stderr)
            return cli.EXIT_FAILURES
        (args.out / "demo_summary.json").write_text(json.dumps(report.as_dict(), indent=2, default=str))
        print_summary(report, settings)
        problems = check(report)
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return cli.EXIT_FAILURES if problems else cli.EXIT_OK

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
