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
DUPLICATES_MAPPER = MAPREDUCE_DIR / "duplicates_mapper.py"
DUPLICATES_REDUCER = MAPREDUCE_DIR / "duplicates_reducer.py"
DUPLICATES_GROUPS = MAPREDUCE_DIR / "duplicates_groups.py"
# The scripts' shared helpers (stdlib only): shipped with every stage's scripts, importable there
# through TASK_ENV (streaming_common.py's docstring says why the script's own folder will not do).
STREAMING_COMMON = MAPREDUCE_DIR / "streaming_common.py"
SUMMARY_FILES = (MAPPER, REDUCER, STREAMING_COMMON)
# The environment of every streaming task: its working directory holds a link to each -files entry.
TASK_ENV = {"PYTHONPATH": "."}
JOBS = ("summary", "duplicates")
# All part files merged and sorted: one file for readers that do not want to glob. Not named
# part-* so that a reader globbing part-* does not count the groups twice.
MERGED_NAME = "summary.tsv"
MERGED_NAMES = {"summary": MERGED_NAME, "duplicates": "duplicates.tsv"}

# The key of every map output line is its first two fields (dimension, value). The combiner's
# output is parsed with the *reduce* setting (Hadoop's PipeCombiner extends PipeReducer), so
# both must say 2, or partials of one group could reach the reducer apart.
JOB_CONF = {
    "stream.num.map.output.key.fields": "2",
    "stream.num.reduce.output.key.fields": "2",
}
# What an output folder of ours may hold; --overwrite deletes nothing else.
_OUTPUT_FILE = re.compile(r"^(\.?part-\d+(\.crc)?|\.?_SUCCESS(\.crc)?|"
                          + "|".join(map(re.escape, MERGED_NAMES.values())) + r")$")


class JobFailed(Exception):
    """The job ran and failed; the message is the reason (shown on stderr, exit status 1)."""


@dataclass
class JobSpec:
    input: str  # a local CSV path, or an s3:// URI for the emr runner
    output_dir: Path
    reducers: int = 1
    identity: bool = False  # /bin/cat as mapper and reducer: a smoke test of the runner
    overwrite: bool = False
    job: str = "summary"  # one of JOBS
    threshold: int | None = None  # duplicates: pHash bits apart (None: the scripts' default)
    max_bucket: int | None = None  # duplicates: distinct hashes per bucket compared in full

    @property
    def merged_name(self) -> str:
        return MERGED_NAMES[self.job]


@dataclass(frozen=True)
class Stage:
    """One streaming job of a chain: the scripts it ships (-files), its mapper and reducer
    (argv; the first word is a script of `files` or a system command such as /bin/cat), and its
    reduce tasks (None: the job's --reducers)."""

    name: str
    files: tuple[Path, ...]
    mapper: tuple[str, ...]
    reducer: tuple[str, ...]
    reducers: int | None = None
    conf: dict[str, str] = field(default_factory=dict)


def duplicate_stages(spec: JobSpec) -> list[Stage]:
    """The duplicates job: candidates (bands and sha256 -> verified edges), then groups (one
    reduce task joins all edges into connected components). See mapreduce/README.md."""
    from mapreduce.duplicates_reducer import DEFAULT_MAX_BUCKET, DEFAULT_THRESHOLD

    threshold = str(DEFAULT_THRESHOLD if spec.threshold is None else spec.threshold)
    max_bucket = str(DEFAULT_MAX_BUCKET if spec.max_bucket is None else spec.max_bucket)
    return [
        Stage("candidates", (DUPLICATES_MAPPER, DUPLICATES_REDUCER, STREAMING_COMMON),
              (DUPLICATES_MAPPER.name, "--threshold", threshold),
              (DUPLICATES_REDUCER.name, "--threshold", threshold, "--max-bucket", max_bucket),
              conf={"stream.num.map.output.key.fields": "2"}),
        Stage("groups", (DUPLICATES_GROUPS, STREAMING_COMMON), ("/bin/cat",), (DUPLICATES_GROUPS.name,), reducers=1),
    ]


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


def _files_args(files: list[str]) -> list[str]:
    """-files (a generic option: before any streaming option, or Hadoop ignores it) and the
    -cmdenv that makes every one of them importable by the scripts."""
    args = ["-files", ",".join(files)]
    for name, value in TASK_ENV.items():
        args += ["-cmdenv", f"{name}={value}"]
    return args


def streaming_args(*, input_uri: str, output_uri: str, reducers: int, identity: bool,
                   files: list[str], conf: dict[str, str] | None = None) -> list[str]:
    """The arguments after `hadoop jar hadoop-streaming.jar`, the same for local Hadoop and EMR.
    Generic options (-D, -files) come first: Hadoop ignores them after streaming options.
    `files`: where SUMMARY_FILES are (paths or s3://), in that order."""
    args: list[str] = []
    for name, value in {**JOB_CONF, **(conf or {})}.items():
        args += ["-D", f"{name}={value}"]
    if identity:
        args += ["-mapper", "/bin/cat", "-reducer", "/bin/cat"]
    else:
        args = args + _files_args(files) + [
            "-mapper", MAPPER.name, "-combiner", f"{REDUCER.name} --combiner", "-reducer", REDUCER.name]
    return args + ["-numReduceTasks", str(reducers), "-input", input_uri, "-output", output_uri]


def stage_streaming_args(stage: Stage, *, input_uri: str, output_uri: str, reducers: int,
                         files: list[str], conf: dict[str, str] | None = None) -> list[str]:
    """streaming_args for one stage of a chain; `files` are where its scripts are (paths or s3://)."""
    args: list[str] = []
    for name, value in {**stage.conf, **(conf or {})}.items():
        args += ["-D", f"{name}={value}"]
    args += _files_args(files) + ["-mapper", " ".join(stage.mapper), "-reducer", " ".join(stage.reducer)]
    return args + ["-numReduceTasks", str(stage.reducers or reducers), "-input", input_uri, "-output", output_uri]


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


def merge_parts(output_dir: Path, name: str = MERGED_NAME) -> tuple[Path, int]:
    """Write every line of the part files, sorted, to `name`; returns (path, lines).
    Several reducers hold disjoint groups, so sorting is all the merge needs."""
    lines: list[str] = []
    for part in part_files(output_dir):
        with open(part, encoding="utf-8", newline="\n") as fh:
            lines.extend(line if line.endswith("\n") else line + "\n" for line in fh if line.strip())
    lines.sort()
    merged = output_dir / name
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
