"""The real Hadoop Streaming jar in local mode: the same arguments a user types on EMR,
run by LocalJobRunner on the local file system. Jars come from Maven Central through
mapreduce/hadoop/pom.xml into LOCAL_STATE_DIR/hadoop/libs, once."""
from __future__ import annotations

import logging
import re
import subprocess
import tempfile
import time
from pathlib import Path

from imgpipe import jvm
from imgpipe.errors import UserError
from imgpipe.settings import Settings
from mapreduce.runners.common import (MAPREDUCE_DIR, SUMMARY_FILES, JobFailed, JobResult, JobSpec,
                                      count_data_rows, duplicate_stages, merge_parts, part_files,
                                      prepare_output_dir, stage_streaming_args, streaming_args)

log = logging.getLogger("mapreduce.hadoop")

HADOOP_DIR = MAPREDUCE_DIR / "hadoop"
MAIN_CLASS = "org.apache.hadoop.streaming.HadoopStreaming"
# Java 17 closes the JDK internals Hadoop reaches into; Hadoop 3.4's launcher opens them
# (hadoop-functions.sh, hadoop_finalize_jpms_opts; the same list is extraJavaTestArgs in
# hadoop-project-3.4.x.pom). We start the JVM ourselves, so we pass them ourselves.
JPMS_OPTS = [
    "-XX:+IgnoreUnrecognizedVMOptions",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=java.base/java.math=ALL-UNNAMED",
    "--add-opens=java.base/java.net=ALL-UNNAMED",
    "--add-opens=java.base/java.text=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.util.zip=ALL-UNNAMED",
    "--add-opens=java.base/sun.security.util=ALL-UNNAMED",
    "--add-opens=java.base/sun.security.x509=ALL-UNNAMED",
]
_PROGRESS = re.compile(r"map (\d+)% reduce (\d+)%")
_COUNTER = re.compile(r"^\t\t(.+)=(-?\d+)$")


def hadoop_libs(settings: Settings) -> Path:
    """The folder of Hadoop jars, fetched by Maven on first use."""
    try:
        return jvm.fetch_maven_jars(HADOOP_DIR / "pom.xml", settings.local_state_dir / "hadoop" / "libs", "hadoop")
    except jvm.JvmError as exc:
        raise UserError(str(exc)) from None


def java_binary() -> str:
    try:
        return jvm.java_binary("--runner hadoop")
    except jvm.JvmError as exc:
        raise UserError(str(exc)) from None


def local_conf(tmp: Path, reducers: int, split_size: int | None) -> dict[str, str]:
    conf = {
        "mapreduce.framework.name": "local",
        "fs.defaultFS": "file:///",
        # Per-run scratch space, so two jobs at once never share staging or spill folders.
        "hadoop.tmp.dir": str(tmp / "hadoop-tmp"),
        # LocalJobRunner runs one reduce task at a time unless told otherwise.
        "mapreduce.local.reduce.tasks.maximum": str(max(1, min(reducers, 2))),
    }
    if split_size:
        # Smaller splits make several map tasks, and all but the first see no header row.
        # Streaming reads input with the old mapred API: a split is at most one block (the
        # new API's split.maxsize does not apply, and local mode forces mapreduce.job.maps=1).
        conf["fs.local.block.size"] = str(split_size)
    return conf


def job_command(java: str, libs: Path, args: list[str], heap: str = "1g") -> list[str]:
    return [java, f"-Xmx{heap}", *JPMS_OPTS, "-Djava.net.preferIPv4Stack=true",
            f"-Dlog4j.configuration=file:{HADOOP_DIR / 'log4j.properties'}",
            "-cp", f"{libs}/*", MAIN_CLASS, *args]


def counters_from_log(lines: list[str], group: str = "imgpipe") -> dict[str, int]:
    """The counters of one group from the job client's final `Counters:` report."""
    counters: dict[str, int] = {}
    in_group = False
    for line in lines:
        if line.startswith("\t") and not line.startswith("\t\t"):
            in_group = line.strip() == group
        elif in_group:
            match = _COUNTER.match(line)
            if match:
                counters[match.group(1).strip()] = int(match.group(2))
    return counters


def _streaming(java: str, libs: Path, args: list[str], tmp: Path, on_progress=None) -> tuple[int, list[str], float]:
    """Run one streaming job in a JVM; (exit status, its output lines, seconds)."""
    log.debug("hadoop streaming %s", " ".join(args))
    started = time.monotonic()
    # cwd: LocalJobRunner links the -files into the working folder of the JVM.
    proc = subprocess.Popen(job_command(java, libs, args), cwd=tmp, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            encoding="utf-8", errors="replace")
    lines = []
    for line in proc.stdout:
        line = line.rstrip("\n")
        lines.append(line)
        match = _PROGRESS.search(line)
        if match and on_progress:
            on_progress(int(match.group(1)), int(match.group(2)))
    code = proc.wait()
    return code, lines, time.monotonic() - started


def _failure(code: int, lines: list[str], what: str = "Hadoop streaming") -> JobFailed:
    # Java stack frames bury the reason (often the mapper's own traceback, which the
    # streaming jar copies to stderr): show the last lines that are not frames.
    tail = "\n".join([ln for ln in lines if not ln.startswith("\tat ")][-15:]) or "(no output)"
    return JobFailed(f"{what} exited with status {code}:\n{tail}")


def run_hadoop(spec: JobSpec, settings: Settings, split_size: int | None = None,
               on_progress=None) -> JobResult:
    """on_progress(map %, reduce %) as the job client reports it; a chain of n stages reports
    stage k's map % plus 200 * k, so a bar of 200 * n steps fills once."""
    source = Path(spec.input)
    if not source.is_file():
        raise UserError(f"--input {spec.input} is not a file")
    java = java_binary()
    libs = hadoop_libs(settings)
    prepare_output_dir(spec.output_dir, spec.overwrite)
    output = spec.output_dir.resolve()
    if spec.job == "duplicates" and not spec.identity:
        return _run_chain(spec, source, output, java, libs, split_size, on_progress)
    with tempfile.TemporaryDirectory(prefix="imgpipe-hadoop-") as tmp_name:
        tmp = Path(tmp_name)
        args = streaming_args(
            input_uri=str(source.resolve()), output_uri=str(output), reducers=spec.reducers,
            identity=spec.identity, files=[str(path) for path in SUMMARY_FILES],
            conf=local_conf(tmp, spec.reducers, split_size))
        code, lines, seconds = _streaming(java, libs, args, tmp, on_progress)
    if code != 0 or not (output / "_SUCCESS").exists():
        raise _failure(code, lines)
    merged, groups = merge_parts(output)
    return JobResult(runner="hadoop", output_dir=spec.output_dir, parts=part_files(output), merged=merged,
                     groups_out=groups, seconds=seconds, rows_in=count_data_rows(source),
                     counters=counters_from_log(lines),
                     framework_counters=counters_from_log(lines, "Map-Reduce Framework"))


def _run_chain(spec: JobSpec, source: Path, output: Path, java: str, libs: Path, split_size: int | None,
               on_progress=None) -> JobResult:
    """The stages of a chained job, one streaming job each; stage k + 1 reads stage k's output
    folder. Counters are summed over the stages; framework counters are the first stage's."""
    stages = duplicate_stages(spec)
    counters: dict[str, int] = {}
    framework: dict[str, int] = {}
    seconds = 0.0
    with tempfile.TemporaryDirectory(prefix="imgpipe-hadoop-") as tmp_name:
        tmp = Path(tmp_name)
        stage_input = source.resolve()
        for index, stage in enumerate(stages):
            last = index == len(stages) - 1
            stage_output = output if last else tmp / f"stage-{stage.name}"
            reducers = stage.reducers or spec.reducers
            args = stage_streaming_args(
                stage, input_uri=str(stage_input), output_uri=str(stage_output), reducers=reducers,
                files=[str(path) for path in stage.files],
                conf=local_conf(tmp, reducers, split_size if index == 0 else None))

            def progress(map_pct: int, reduce_pct: int, offset: int = 200 * index) -> None:
                if on_progress:
                    on_progress(map_pct + offset, reduce_pct)

            code, lines, stage_seconds = _streaming(java, libs, args, tmp, progress)
            seconds += stage_seconds
            if code != 0 or not (stage_output / "_SUCCESS").exists():
                raise _failure(code, lines, f"Hadoop streaming, stage {stage.name},")
            for key, value in counters_from_log(lines).items():
                counters[key] = counters.get(key, 0) + value
            if index == 0:
                framework = counters_from_log(lines, "Map-Reduce Framework")
            stage_input = stage_output
    merged, groups = merge_parts(output, spec.merged_name)
    return JobResult(runner="hadoop", output_dir=spec.output_dir, parts=part_files(output), merged=merged,
                     groups_out=groups, seconds=seconds, rows_in=count_data_rows(source),
                     counters=counters, framework_counters=framework)
