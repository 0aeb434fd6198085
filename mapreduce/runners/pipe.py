"""`mapper | LC_ALL=C sort | reducer` in subprocesses: the streaming contract without Java.

A big input is cut into line-aligned byte ranges, one mapper process each (as Hadoop cuts
splits), so the mappers use every core; their outputs are sorted together and reduced once.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from imgpipe.errors import UserError
from mapreduce.runners.common import (MAPPER, REDUCER, JobFailed, JobResult, JobSpec, count_data_rows,
                                      counters_from_stderr, merge_parts, prepare_output_dir)

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
    """(mapper, reducer) argv. The reducer is not run again as a combiner here: each mapper
    already sums its whole range, which is all a combiner would do."""
    if identity:
        return ["cat"], ["cat"]
    return [python, str(MAPPER)], [python, str(REDUCER)]


def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8", "replace")


def run_pipe(spec: JobSpec, mappers: int | None = None) -> JobResult:
    source = Path(spec.input)
    if not source.is_file():
        raise UserError(f"--input {spec.input} is not a file")
    if spec.reducers != 1:
        raise UserError("the pipe runner has one reducer; --reducers is for --runner hadoop or emr")
    if mappers is not None and mappers < 1:
        raise UserError("--mappers must be at least 1")
    prepare_output_dir(spec.output_dir, spec.overwrite)
    spec.output_dir.mkdir()
    mapper_cmd, reducer_cmd = commands(spec.identity)
    ranges = split_ranges(source, mappers or default_mappers(source.stat().st_size))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="imgpipe-pipe-") as tmp_name:
        tmp = Path(tmp_name)
        outputs = [tmp / f"map-{i:05d}.out" for i in range(len(ranges))]
        errors = [tmp / f"map-{i:05d}.err" for i in range(len(ranges))]
        procs, feeders = [], []
        with open(source, "rb") as src:
            for (offset, length), out_path, err_path in zip(ranges, outputs, errors):
                with open(out_path, "wb") as out, open(err_path, "wb") as err:
                    proc = subprocess.Popen(mapper_cmd, stdin=subprocess.PIPE, stdout=out, stderr=err)
                procs.append(proc)
                feeder = threading.Thread(target=_feed, args=(src.fileno(), offset, length, proc.stdin), daemon=True)
                feeder.start()
                feeders.append(feeder)
            for feeder in feeders:
                feeder.join()
        map_codes = [proc.wait() for proc in procs]
        stage_errors = list(zip([f"mapper {i}" for i in range(len(procs))], map_codes, errors))
        if all(code == 0 for code in map_codes):
            # Byte order, whatever the user's locale: the reducer needs each group's lines
            # adjacent, and a locale's collation may ignore the tab that ends the key.
            sort_env = {**os.environ, "LC_ALL": "C", "TMPDIR": str(tmp)}
            with open(spec.output_dir / "part-00000", "wb") as out, \
                    open(tmp / "sort.err", "wb") as sort_err, open(tmp / "reduce.err", "wb") as reduce_err:
                sorter = subprocess.Popen(["sort", *map(str, outputs)], stdout=subprocess.PIPE, stderr=sort_err,
                                          env=sort_env)
                reducer = subprocess.Popen(reducer_cmd, stdin=sorter.stdout, stdout=out, stderr=reduce_err)
                sorter.stdout.close()  # so sort sees SIGPIPE if the reducer dies
                reduce_code = reducer.wait()
                sort_code = sorter.wait()
            stage_errors += [("sort", sort_code, tmp / "sort.err"), ("reducer", reduce_code, tmp / "reduce.err")]
        counters: dict[str, int] = {}
        for name, code, err_path in stage_errors:
            found, other = counters_from_stderr(_read(err_path))
            for key, value in found.items():
                counters[key] = counters.get(key, 0) + value
            if code != 0:
                tail = "\n".join(other[-10:]) or "(nothing on stderr)"
                raise JobFailed(f"{name} exited with status {code}:\n{tail}")
    seconds = time.monotonic() - started
    (spec.output_dir / "_SUCCESS").touch()
    merged, groups = merge_parts(spec.output_dir)
    return JobResult(runner="pipe", output_dir=spec.output_dir, parts=[spec.output_dir / "part-00000"],
                     merged=merged, groups_out=groups, seconds=seconds,
                     rows_in=count_data_rows(source), counters=counters)
