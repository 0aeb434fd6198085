"""`mapper | LC_ALL=C sort | reducer` in subprocesses: the streaming contract without Java.

A big input is cut into line-aligned byte ranges, one mapper process each (as Hadoop cuts
splits), so the mappers use every core; their outputs are sorted together and reduced once.
A chained job (duplicates) runs one such pipeline per stage, each reading the last one's output.
Each stage's scripts run as on a cluster node: from a task folder holding its -files and nothing
else, with the streaming tasks' environment (TASK_ENV), so a file missing from a stage fails here too.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from imgpipe.errors import UserError
from mapreduce.runners.common import (MAPPER, REDUCER, SUMMARY_FILES, TASK_ENV, JobFailed, JobResult, JobSpec, Stage,
                                      count_data_rows, counters_from_stderr, duplicate_stages, merge_parts,
                                      prepare_output_dir)

SPLIT_BYTES = 64 * 1024 * 1024  # input per mapper before another one is worth starting


def default_mappers(size: int, cpus: int | None = None) -> int:
    return max(1, min(cpus or os.cpu_count() or 1, 8, 1 + size // SPLIT_BYTES))


def split_ranges(path: Path, parts: int) -> list[tuple[int, int]]:
    """(offset, length) of `parts` byte ranges of the file, each starting at a line start."""
    size = path.stat().st_size
    starts = [0]
    with open(path, "rb") as fh:
        for i in range(1, parts):
            fh.seek(max(i * size // parts - 1, starts[-1]))
            fh.readline()  # to the end of the line the cut falls in
            if fh.tell() < size and fh.tell() > starts[-1]:
                starts.append(fh.tell())
    ends = starts[1:] + [size]
    return [(start, end - start) for start, end in zip(starts, ends)]


def _feed(source_fd: int, offset: int, length: int, pipe) -> None:
    """Copy a byte range of the input into a mapper's stdin, in the kernel (no Python loop
    over the data, so the parent costs no CPU the mappers could use)."""
    sent = 0
    try:
        try:
            while sent < length:
                n = os.sendfile(pipe.fileno(), source_fd, offset + sent, length - sent)
                if n == 0:
                    break
                sent += n
        except OSError as exc:
            if isinstance(exc, BrokenPipeError):
                raise
            # No sendfile into a pipe on this system (macOS): copy in user space.
            while sent < length:
                chunk = os.pread(source_fd, min(1 << 20, length - sent), offset + sent)
                if not chunk:
                    break
                pipe.write(chunk)
                sent += len(chunk)
    except BrokenPipeError:
        pass  # the mapper died; its exit status tells why
    finally:
        try:
            pipe.close()
        except BrokenPipeError:
            pass


def commands(identity: bool, python: str = sys.executable) -> tuple[list[str], list[str]]:
    """(mapper, reducer) argv, run in the task folder of SUMMARY_FILES. The reducer is not run
    again as a combiner here: each mapper already sums its whole range, which is all a combiner
    would do."""
    if identity:
        return ["cat"], ["cat"]
    return [python, MAPPER.name], [python, REDUCER.name]


def task_folder(files: tuple[Path, ...], tmp: Path, label: str = "") -> Path:
    """A folder holding a copy of each of a stage's -files, as a task's working directory does."""
    folder = tmp / f"{label}task"
    folder.mkdir()
    for path in files:
        shutil.copy2(path, folder / path.name)
    return folder


def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8", "replace")


def stage_commands(stage: Stage, python: str = sys.executable) -> tuple[list[str], list[str]]:
    """(mapper, reducer) argv of one stage of a chain, run in its task folder: its scripts run by this Python."""
    scripts = {path.name for path in stage.files}

    def argv(words: tuple[str, ...]) -> list[str]:
        if words[0] in scripts:
            return [python, *words]
        return ["cat"] if words == ("/bin/cat",) else list(words)

    return argv(stage.mapper), argv(stage.reducer)


def _map_sort_reduce(source: Path, ranges: list[tuple[int, int]], mapper_cmd: list[str], reducer_cmd: list[str],
                     output: Path, tmp: Path, label: str = "", task: Path | None = None) -> dict[str, int]:
    """One mapper per byte range of `source`, their outputs sorted together into one reducer
    writing `output`, both run in `task` (a task_folder); returns the counters, raises JobFailed
    with the first failing stage."""
    task_env = {**os.environ, **TASK_ENV}
    outputs = [tmp / f"{label}map-{i:05d}.out" for i in range(len(ranges))]
    errors = [tmp / f"{label}map-{i:05d}.err" for i in range(len(ranges))]
    procs, feeders = [], []
    with open(source, "rb") as src:
        for (offset, length), out_path, err_path in zip(ranges, outputs, errors):
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                proc = subprocess.Popen(mapper_cmd, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=task,
                                        env=task_env)
            procs.append(proc)
            feeder = threading.Thread(target=_feed, args=(src.fileno(), offset, length, proc.stdin), daemon=True)
            feeder.start()
            feeders.append(feeder)
        for feeder in feeders:
            feeder.join()
    map_codes = [proc.wait() for proc in procs]
    prefix = f"{label[:-1]} stage: " if label else ""
    stage_errors = list(zip([f"{prefix}mapper {i}" for i in range(len(procs))], map_codes, errors))
    if all(code == 0 for code in map_codes):
        # Byte order, whatever the user's locale: the reducer needs each group's lines
        # adjacent, and a locale's collation may ignore the tab that ends the key.
        sort_env = {**os.environ, "LC_ALL": "C", "TMPDIR": str(tmp)}
        sort_err_path, reduce_err_path = tmp / f"{label}sort.err", tmp / f"{label}reduce.err"
        with open(output, "wb") as out, open(sort_err_path, "wb") as sort_err, \
                open(reduce_err_path, "wb") as reduce_err:
            sorter = subprocess.Popen(["sort", *map(str, outputs)], stdout=subprocess.PIPE, stderr=sort_err,
                                      env=sort_env)
            reducer = subprocess.Popen(reducer_cmd, stdin=sorter.stdout, stdout=out, stderr=reduce_err, cwd=task,
                                       env=task_env)
            sorter.stdout.close()  # so sort sees SIGPIPE if the reducer dies
            reduce_code = reducer.wait()
            sort_code = sorter.wait()
        for path in outputs:
            path.unlink()  # a chained stage's temporary space stays one stage's worth
        stage_errors += [(f"{prefix}sort", sort_code, sort_err_path), (f"{prefix}reducer", reduce_code, reduce_err_path)]
    counters: dict[str, int] = {}
    for name, code, err_path in stage_errors:
        found, other = counters_from_stderr(_read(err_path))
        for key, value in found.items():
            counters[key] = counters.get(key, 0) + value
        if code != 0:
            tail = "\n".join(other[-10:]) or "(nothing on stderr)"
            raise JobFailed(f"{name} exited with status {code}:\n{tail}")
    return counters


def run_pipe(spec: JobSpec, mappers: int | None = None) -> JobResult:
    source = Path(spec.input)
    if not source.is_file():
        raise UserError(f"--input {spec.input} is not a file")
    if spec.reducers != 1:
        raise UserError("the pipe runner has one reducer; --reducers is for --runner hadoop or emr")
    prepare_output_dir(spec.output_dir, spec.overwrite)
    spec.output_dir.mkdir()
    ranges = split_ranges(source, mappers or default_mappers(source.stat().st_size))
    part = spec.output_dir / "part-00000"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="imgpipe-pipe-") as tmp_name:
        tmp = Path(tmp_name)
        if spec.job == "duplicates" and not spec.identity:
            # A chain: each stage's single output file is the next stage's input.
            counters: dict[str, int] = {}
            stages = duplicate_stages(spec)
            stage_input, stage_ranges = source, ranges
            for index, stage in enumerate(stages):
                stage_output = part if index == len(stages) - 1 else tmp / f"{stage.name}.out"
                mapper_cmd, reducer_cmd = stage_commands(stage)
                found = _map_sort_reduce(stage_input, stage_ranges, mapper_cmd, reducer_cmd, stage_output, tmp,
                                         label=f"{stage.name}-", task=task_folder(stage.files, tmp, f"{stage.name}-"))
                for key, value in found.items():
                    counters[key] = counters.get(key, 0) + value
                stage_input, stage_ranges = stage_output, [(0, stage_output.stat().st_size)]
        else:
            mapper_cmd, reducer_cmd = commands(spec.identity)
            counters = _map_sort_reduce(source, ranges, mapper_cmd, reducer_cmd, part, tmp,
                                        task=task_folder(SUMMARY_FILES, tmp))
    seconds = time.monotonic() - started
    (spec.output_dir / "_SUCCESS").touch()
    merged, groups = merge_parts(spec.output_dir, spec.merged_name)
    return JobResult(runner="pipe", output_dir=spec.output_dir, parts=[part],
                     merged=merged, groups_out=groups, seconds=seconds,
                     rows_in=count_data_rows(source), counters=counters)
