"""`mapreduce_pipe` and `mapreduce_hadoop`: the job's runners on one big generated CSV.

Floors: `cut -d, -f<format> | LC_ALL=C sort | uniq -c` for the pipe (the least a shell can do
to count one column), and the pipe runner for Hadoop (same scripts, no framework). The CSV
comes from fixtures.documents (plausible documents, every column) and is kept under
LOCAL_STATE_DIR/bench/, since a million rows take a while to write.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from imgpipe.settings import REPO_ROOT, Settings

from bench.figures import Figure
from bench.pipeline import BenchError

SEED = 7


def sample_csv(rows: int, cache_dir: Path) -> Path:
    """The CSV of `rows` sample documents, written once: the name holds the row count, the seed
    and a hash of the code that writes it, so a change to the documents or the export makes
    a new file (and the stale one is deleted)."""
    import hashlib

    code = b"".join((REPO_ROOT / name).read_bytes() for name in
                    ("fixtures/documents.py", "mapreduce/export_csv.py", "imgpipe/document.py"))
    path = cache_dir / f"image_metadata_{rows}_seed{SEED}_{hashlib.sha256(code).hexdigest()[:10]}.csv"
    if path.exists():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    for stale in cache_dir.glob(f"image_metadata_{rows}_seed{SEED}*.csv"):
        stale.unlink()
    partial = path.with_suffix(".partial")
    code = subprocess.run([sys.executable, "-m", "fixtures.documents", "--rows", str(rows), "--out", str(partial),
                           "--seed", str(SEED)], cwd=REPO_ROOT, stdout=subprocess.DEVNULL).returncode
    if code != 0:
        raise BenchError(f"fixtures.documents exited with status {code}")
    partial.replace(path)  # only a complete file gets the final name
    return path


def _format_column() -> int:
    from mapreduce.mapper import DEFAULT_COLUMNS

    return DEFAULT_COLUMNS.index("format") + 1


def shell_floor(csv_path: Path) -> tuple[float, Counter]:
    """Seconds of `cut | sort | uniq -c` on the format column, and the counts it printed."""
    env = {**os.environ, "LC_ALL": "C"}
    started = time.perf_counter()
    cut = subprocess.Popen(["cut", "-d,", f"-f{_format_column()}", str(csv_path)], stdout=subprocess.PIPE, env=env)
    sort = subprocess.Popen(["sort"], stdin=cut.stdout, stdout=subprocess.PIPE, env=env)
    cut.stdout.close()
    uniq = subprocess.Popen(["uniq", "-c"], stdin=sort.stdout, stdout=subprocess.PIPE, env=env)
    sort.stdout.close()
    output, _ = uniq.communicate()
    codes = (cut.wait(), sort.wait(), uniq.returncode)
    seconds = time.perf_counter() - started
    if any(codes):
        raise BenchError(f"cut | sort | uniq -c failed with statuses {codes}")
    counts = Counter()
    for line in output.decode().splitlines():
        number, _, value = line.strip().partition(" ")
        if value != "format":  # the header row
            counts[value] = int(number)
    return seconds, counts


def _format_counts(summary_tsv: Path) -> Counter:
    counts = Counter()
    for line in summary_tsv.read_text(encoding="utf-8").splitlines():
        fields = line.split("\t")
        if fields[0] == "format":
            counts[fields[1]] = int(fields[2])
    return counts


def _checked(result, rows: int, what: str, expected_formats: Counter) -> None:
    if result.counters.get("rows") != rows:
        raise BenchError(f"{what}: the mapper counted {result.counters.get('rows')} rows of {rows}")
    got = _format_counts(result.merged)
    if got != expected_formats:
        raise BenchError(f"{what}: format counts {dict(got)} differ from cut|sort|uniq's {dict(expected_formats)}")


def mapreduce_figures(settings: Settings, rows: int, cache_dir: Path, work: Path, hadoop: bool,
                      skip_reason: str = "") -> list[Figure]:
    from mapreduce.runners.common import JobSpec
    from mapreduce.runners.pipe import default_mappers, run_pipe

    csv_path = sample_csv(rows, cache_dir)
    size_mb = round(csv_path.stat().st_size / 1e6, 1)
    floor_seconds, formats = shell_floor(csv_path)
    pipe = run_pipe(JobSpec(input=str(csv_path), output_dir=work / "mapreduce-pipe", overwrite=True))
    _checked(pipe, rows, "pipe runner", formats)
    pipe_figure = Figure("mapreduce_pipe", rows / pipe.seconds, "rows/s", floor=rows / floor_seconds,
                         floor_name="cut|sort|uniq -c",
                         detail={"rows": rows, "csv_mb": size_mb, "seconds": round(pipe.seconds, 2),
                                 "floor_seconds": round(floor_seconds, 2), "groups_out": pipe.groups_out,
                                 "mappers": default_mappers(csv_path.stat().st_size), "dimensions": 5,
                                 "floor_columns": 1})
    if not hadoop:
        return [pipe_figure, Figure("mapreduce_hadoop", None, "rows/s", floor=pipe_figure.value,
                                    floor_name="mapreduce_pipe", note=f"skipped ({skip_reason})")]
    from mapreduce.runners.hadoop import run_hadoop

    result = run_hadoop(JobSpec(input=str(csv_path), output_dir=work / "mapreduce-hadoop", overwrite=True), settings)
    _checked(result, rows, "hadoop runner", formats)
    hadoop_figure = Figure("mapreduce_hadoop", rows / result.seconds, "rows/s", floor=pipe_figure.value,
                           floor_name="mapreduce_pipe",
                           detail={"rows": rows, "csv_mb": size_mb, "seconds": round(result.seconds, 2),
                                   "groups_out": result.groups_out,
                                   "mode": "LocalJobRunner (mapreduce.framework.name=local), 1 reducer"})
    return [pipe_figure, hadoop_figure]
