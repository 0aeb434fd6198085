"""What the runners share: the job's streaming arguments, the output folder, part files, counters."""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from imgpipe.errors import UserError

MAPREDUCE_DIR = Path(__file__).resolve().parent.parent
MAPPER = MAPREDUCE_DIR / "mapper.py"
REDUCER = MAPREDUCE_DIR / "reducer.py"
# All part files merged and sorted: one file for readers that do not want to glob. Not named
# part-* so that a reader globbing part-* does not count the groups twice.
MERGED_NAME = "summary.tsv"

# The key of every map output line is its first two fields (dimension, value). The combiner's
# output is parsed with the *reduce* setting (Hadoop's PipeCombiner extends PipeReducer), so
# both must say 2, or partials of one group could reach the reducer apart.
JOB_CONF = {
    "stream.num.map.output.key.fields": "2",
    "stream.num.reduce.output.key.fields": "2",
}
# What an output folder of ours may hold; --overwrite deletes nothing else.
_OUTPUT_FILE = re.compile(r"^(\.?part-\d+(\.crc)?|\.?_SUCCESS(\.crc)?|" + re.escape(MERGED_NAME) + r")$")


class JobFailed(Exception):
    """The job ran and failed; the message is the reason (shown on stderr, exit status 1)."""


@dataclass
class JobSpec:
    input: str  # a local CSV path, or an s3:// URI for the emr runner
    output_dir: Path
    reducers: int = 1
    identity: bool = False  # /bin/cat as mapper and reducer: a smoke test of the runner
    overwrite: bool = False


@dataclass
class JobResult:
    runner: str
    output_dir: Path
    parts: list[Path]
    merged: Path
    groups_out: int
    seconds: float
    rows_in: int | None = None
    counters: dict[str, int] = field(default_factory=dict)  # the job's own (group imgpipe)
    framework_counters: dict[str, int] = field(default_factory=dict)  # Hadoop's, where known


def streaming_args(*, input_uri: str, output_uri: str, reducers: int, identity: bool,
                   files: list[str], conf: dict[str, str] | None = None) -> list[str]:
    """The arguments after `hadoop jar hadoop-streaming.jar`, the same for local Hadoop and EMR.
    Generic options (-D, -files) come first: Hadoop ignores them after streaming options."""
    args: list[str] = []
    for name, value in {**JOB_CONF, **(conf or {})}.items():
        args += ["-D", f"{name}={value}"]
    if identity:
        args += ["-mapper", "/bin/cat", "-reducer", "/bin/cat"]
    else:
        args = args + ["-files", ",".join(files)] + [
            "-mapper", "mapper.py", "-combiner", "reducer.py --combiner", "-reducer", "reducer.py"]
    return args + ["-numReduceTasks", str(reducers), "-input", input_uri, "-output", output_uri]


def prepare_output_dir(path: Path, overwrite: bool) -> None:
    """Make sure `path` does not exist (Hadoop insists), deleting an earlier job output only."""
    if not path.exists():
        if not path.parent.exists():
            path.parent.mkdir(parents=True)
        return
    if not overwrite:
        raise UserError(f"output folder {path} already exists; remove it or pass --overwrite")
    if not path.is_dir():
        raise UserError(f"--output {path} is a file, not a folder")
    strangers = [p.name for p in path.iterdir() if not _OUTPUT_FILE.match(p.name)]
    if strangers:
        raise UserError(f"--overwrite only replaces a job output, and {path} also holds "
                        f"{', '.join(sorted(strangers)[:3])}; pick another folder")
    shutil.rmtree(path)


def part_files(path: Path) -> list[Path]:
    return sorted(p for p in path.glob("part-*") if p.is_file() and not p.name.endswith(".crc"))


def merge_parts(output_dir: Path) -> tuple[Path, int]:
    """Write every line of the part files, sorted, to MERGED_NAME; returns (path, lines).
    Several reducers hold disjoint groups, so sorting is all the merge needs."""
    lines: list[str] = []
    for part in part_files(output_dir):
        with open(part, encoding="utf-8", newline="\n") as fh:
            lines.extend(line if line.endswith("\n") else line + "\n" for line in fh if line.strip())
    lines.sort()
    merged = output_dir / MERGED_NAME
    with open(merged, "w", encoding="utf-8", newline="\n") as out:
        out.writelines(lines)
    return merged, len(lines)


def count_data_rows(csv_path: Path) -> int:
    """Lines of the input, less a header line."""
    lines = 0
    last = b"\n"
    with open(csv_path, "rb") as fh:
        first = fh.readline()
        header = first.startswith(b"id,")
        lines += first.count(b"\n")
        last = first[-1:] or last
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    if last != b"\n":
        lines += 1  # a last line without its newline
    return max(lines - (1 if header else 0), 0)


_COUNTER_LINE = re.compile(r"^reporter:counter:([^,]*),([^,]*),(-?\d+)\s*$")


def counters_from_stderr(text: str, group: str = "imgpipe") -> tuple[dict[str, int], list[str]]:
    """Streaming `reporter:counter:` lines summed per name (one group), and the other lines."""
    counters: dict[str, int] = {}
    other = []
    for line in text.splitlines():
        match = _COUNTER_LINE.match(line)
        if match and match.group(1) == group:
            counters[match.group(2)] = counters.get(match.group(2), 0) + int(match.group(3))
        elif not match and line.strip():
            other.append(line)
    return counters, other
