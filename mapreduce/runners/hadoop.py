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
from mapreduce.runners.common import (MAPPER, MAPREDUCE_DIR, REDUCER, JobFailed, JobResult, JobSpec,
                                      count_data_rows, merge_parts, part_files, prepare_output_dir,
                                      streaming_args)

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


def run_hadoop(spec: JobSpec, settings: Settings, split_size: int | None = None,
               on_progress=None) -> JobResult:
    source = Path(spec.input)
    if not source.is_file():
        raise UserError(f"--input {spec.input} is not a file")
    if spec.reducers < 1:
        raise UserError("--reducers must be at least 1")
    java = java_binary()
    libs = hadoop_libs(settings)
    prepare_output_dir(spec.output_dir, spec.overwrite)
    output = spec.output_dir.resolve()
    with tempfile.TemporaryDirectory(prefix="imgpipe-hadoop-") as tmp_name:
        tmp = Path(tmp_name)
        args = streaming_args(
            input_uri=str(source.resolve()), output_uri=str(output), reducers=spec.reducers,
            identity=spec.identity, files=[str(MAPPER), str(REDUCER)],
            conf=local_conf(tmp, spec.reducers, split_size))
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
        seconds = time.monotonic() - started
    if code != 0 or not (output / "_SUCCESS").exists():
        # Java stack frames bury the reason (often the mapper's own traceback, which the
        # streaming jar copies to stderr): show the last lines that are not frames.
        tail = "\n".join([ln for ln in lines if not ln.startswith("\tat ")][-15:]) or "(no output)"
        raise JobFailed(f"Hadoop streaming exited with status {code}:\n{tail}")
    merged, groups = merge_parts(output)
    return JobResult(runner="hadoop", output_dir=spec.output_dir, parts=part_files(output), merged=merged,
                     groups_out=groups, seconds=seconds, rows_in=count_data_rows(source),
                     counters=counters_from_log(lines),
                     framework_counters=counters_from_log(lines, "Map-Reduce Framework"))
