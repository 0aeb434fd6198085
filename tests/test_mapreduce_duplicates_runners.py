"""run_job.py --job duplicates on the three runners: the same golden groups from the pipe runner,
the real Hadoop Streaming jar in local mode (two chained streaming jobs), and EMR (moto's EMR
and S3, with a stand-in cluster that runs each step's streaming arguments as Hadoop would)."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import boto3
import pytest
from moto.emr.models import emr_backends

from mapreduce import run_job
from mapreduce.runners import emr, pipe
from mapreduce.runners.common import (DUPLICATES_GROUPS, DUPLICATES_MAPPER, DUPLICATES_REDUCER, STREAMING_COMMON,
                                      JobFailed, JobSpec, duplicate_stages, stage_streaming_args)
from tests.test_mapreduce_duplicates import (GOLDEN, MALFORMED_REASONS, T, brute_force, golden_documents,
                                             golden_groups, rows_of)
# The same moto EMR and S3 as the summary job's EMR tests (`aws` is a fixture).
from tests.test_mapreduce_emr import ACCOUNT, BUCKET, REGION, aws, running_cluster  # noqa: F401

INPUT = GOLDEN / "input.csv"
PREFIX = "emr/runs/test-dupes/"


def parse_groups(text: str) -> list[tuple[str, list[str]]]:
    return [(line.split("\t")[0], line.split("\t")[3].split(",")) for line in text.splitlines()]


# pipe --------------------------------------------------------------------------------------------

def test_pipe_runner_writes_the_golden_groups(tmp_path, capsys):
    out = tmp_path / "dupes"
    assert run_job.main(["--job", "duplicates", "--input", str(INPUT), "--output", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["_SUCCESS", "duplicates.tsv", "part-00000"]
    assert (out / "part-00000").read_text(encoding="utf-8") == golden_groups()
    assert (out / "duplicates.tsv").read_text(encoding="utf-8") == golden_groups()
    captured = capsys.readouterr()
    assert captured.out.startswith("runner pipe: 43 rows in, 6 malformed rows skipped, 8 groups out,")
    assert "warning" not in captured.err
    # A second run replaces the first with --overwrite, and only then.
    assert run_job.main(["--job", "duplicates", "--input", str(INPUT), "--output", str(out)]) == 2
    assert run_job.main(["--job", "duplicates", "--input", str(INPUT), "--output", str(out), "--overwrite"]) == 0


@pytest.mark.parametrize("mappers", [2, 3, 7])
def test_pipe_runner_splits_the_input_between_mappers(tmp_path, mappers):
    result = pipe.run_pipe(JobSpec(input=str(INPUT), output_dir=tmp_path / "out", job="duplicates"), mappers=mappers)
    assert (tmp_path / "out" / "part-00000").read_text(encoding="utf-8") == golden_groups()
    assert result.counters["rows"] == 37 and result.counters["malformed_rows"] == 6
    assert result.counters["header_rows"] == 1
    assert {k[len("malformed_"):]: v for k, v in result.counters.items()
            if k.startswith("malformed_") and k != "malformed_rows"} == MALFORMED_REASONS
    assert (result.counters["exact_groups"], result.counters["near_groups"]) == (3, 5)


@pytest.mark.parametrize("threshold", [0, 3, 12])
def test_the_threshold_is_passed_to_the_scripts(tmp_path, threshold):
    out = tmp_path / "out"
    assert run_job.main(["--job", "duplicates", "--threshold", str(threshold), "--input", str(INPUT),
                         "--output", str(out)]) == 0
    assert (out / "part-00000").read_text(encoding="utf-8") == brute_force(rows_of(golden_documents()), threshold)


def test_a_capped_bucket_warns_and_never_merges_groups(tmp_path, capsys):
    """--max-bucket 1 turns every bucket with two hashes into a giant one: the counters and the
    warning say so, and whatever is found is still part of a true group."""
    out = tmp_path / "out"
    assert run_job.main(["--job", "duplicates", "--max-bucket", "1", "--input", str(INPUT), "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "pairs in them were not compared" in err
    true_groups = parse_groups(golden_groups())
    for kind, ids in parse_groups((out / "part-00000").read_text(encoding="utf-8")):
        assert any(kind == k and set(ids) <= set(group) for k, group in true_groups)


@pytest.mark.parametrize("args, message", [
    (["--threshold", "4"], "--threshold and --max-bucket are for --job duplicates"),
    (["--job", "duplicates", "--threshold", "32"], "--threshold takes 0 to 31 bits"),
    (["--job", "duplicates", "--threshold", "-1"], "--threshold takes 0 to 31 bits"),
    (["--job", "duplicates", "--max-bucket", "-5"], "--max-bucket takes"),
    (["--job", "duplicates", "--identity"], "--identity is a smoke test"),
    (["--job", "dupes"], "invalid choice"),
])
def test_usage_errors_exit_2_with_one_line(tmp_path, capsys, args, message):
    argv = ["--input", str(INPUT), "--output", str(tmp_path / "out")] + args
    code = None
    try:
        code = run_job.main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_failing_stage_fails_the_job_with_its_reason(tmp_path, monkeypatch, capsys):
    broken = tmp_path / "broken_groups.py"
    broken.write_text("import sys\nsys.stdin.read()\nsys.exit('groups: out of memory')\n")
    real = pipe.stage_commands

    def commands(stage, python=sys.executable):
        mapper_cmd, reducer_cmd = real(stage, python)
        return (mapper_cmd, [python, str(broken)]) if stage.name == "groups" else (mapper_cmd, reducer_cmd)
    monkeypatch.setattr(pipe, "stage_commands", commands)
    assert run_job.main(["--job", "duplicates", "--input", str(INPUT), "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "job failed: groups stage: reducer exited with status 1" in err and "out of memory" in err


def test_the_stages_streaming_arguments_are_what_a_user_types():
    first, second = duplicate_stages(JobSpec(input="x", output_dir=Path("o"), job="duplicates", threshold=6,
                                             max_bucket=500))
    assert stage_streaming_args(first, input_uri="in.csv", output_uri="s1", reducers=3,
                                files=["/x/duplicates_mapper.py", "/x/duplicates_reducer.py", "/x/c.py"]) == [
        "-D", "stream.num.map.output.key.fields=2",
        "-files", "/x/duplicates_mapper.py,/x/duplicates_reducer.py,/x/c.py", "-cmdenv", "PYTHONPATH=.",
        "-mapper", "duplicates_mapper.py --threshold 6",
        "-reducer", "duplicates_reducer.py --threshold 6 --max-bucket 500",
        "-numReduceTasks", "3", "-input", "in.csv", "-output", "s1"]
    assert stage_streaming_args(second, input_uri="s1", output_uri="out", reducers=3,
                                files=["/x/duplicates_groups.py", "/x/c.py"]) == [
        "-files", "/x/duplicates_groups.py,/x/c.py", "-cmdenv", "PYTHONPATH=.",
        "-mapper", "/bin/cat", "-reducer", "duplicates_groups.py",
        "-numReduceTasks", "1", "-input", "s1", "-output", "out"]
    assert (first.files, second.files) == ((DUPLICATES_MAPPER, DUPLICATES_REDUCER, STREAMING_COMMON),
                                           (DUPLICATES_GROUPS, STREAMING_COMMON))


# hadoop ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_hadoop_runner_chains_two_streaming_jobs_to_the_golden_groups(tmp_path):
    """The real streaming jar: stage 1 with several map tasks (only the first sees the header)
    and two reduce tasks, stage 2 reading stage 1's output folder with one reduce task."""
    from imgpipe.settings import load_settings
    from mapreduce.runners.hadoop import run_hadoop

    out = tmp_path / "hadoop"
    result = run_hadoop(JobSpec(input=str(INPUT), output_dir=out, reducers=2, job="duplicates"), load_settings(),
                        split_size=4096)
    assert sorted(p.name for p in out.glob("part-*")) == ["part-00000"]
    assert (out / "_SUCCESS").exists()
    assert (out / "part-00000").read_text(encoding="utf-8") == golden_groups()
    assert (out / "duplicates.tsv").read_text(encoding="utf-8") == golden_groups()
    assert result.framework_counters["Map input records"] == 44
    assert result.framework_counters["Shuffled Maps"] == 2 * -(-INPUT.stat().st_size // 4096)
    assert result.counters["rows"] == 37 and result.counters["malformed_rows"] == 6
    assert (result.counters["exact_groups"], result.counters["near_groups"]) == (3, 5)
    assert result.groups_out == 8


# emr ---------------------------------------------------------------------------------------------

def cluster_steps(cluster_id: str):
    return emr_backends[ACCOUNT][REGION].clusters[cluster_id].steps


def split_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


def run_streaming_step(args: list[str], work: Path) -> None:
    """What `hadoop-streaming ARGS` does with a step's arguments, by hand: fetch -files from S3
    (each into a folder of its own, linked from the task's working directory, in the -cmdenv
    environment: so a script finds streaming_common.py only as a node would), map the -input (an object, or every part file of a folder), partition the map output by
    its key over -numReduceTasks, sort each partition, reduce, write part-* and _SUCCESS."""
    s3 = boto3.client("s3", region_name=REGION)
    assert args[0] == "hadoop-streaming"
    options, conf, task_env = {}, {}, {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    rest = args[1:]
    for flag, value in zip(rest[::2], rest[1::2]):
        if flag in ("-D", "-cmdenv"):
            name, _, setting = value.partition("=")
            (conf if flag == "-D" else task_env)[name] = setting
        else:
            options[flag] = value
    task = Path(tempfile.mkdtemp(prefix="task-", dir=work))
    scripts = set()
    for uri in options["-files"].split(","):
        bucket, key = split_uri(uri)
        localized = Path(tempfile.mkdtemp(prefix="filecache-", dir=work)) / Path(key).name
        s3.download_file(bucket, key, str(localized))
        (task / localized.name).symlink_to(localized)
        scripts.add(localized.name)

    def command(text: str) -> list[str]:
        words = shlex.split(text)
        return [sys.executable, *words] if words[0] in scripts else words

    bucket, key = split_uri(options["-input"])
    if key.endswith("/"):
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=key).get("Contents", [])
        names = sorted(item["Key"] for item in listed if not Path(item["Key"]).name.startswith(("_", ".")))
    else:
        names = [key]
    data = b"".join(s3.get_object(Bucket=bucket, Key=name)["Body"].read() for name in names)
    mapped = subprocess.run(command(options["-mapper"]), input=data, capture_output=True, check=True, cwd=task,
                            env=task_env).stdout
    reducers = int(options["-numReduceTasks"])
    key_fields = int(conf.get("stream.num.map.output.key.fields", "1"))
    partitions: list[list[bytes]] = [[] for _ in range(reducers)]
    for line in mapped.splitlines(keepends=True):
        map_key = b"\t".join(line.rstrip(b"\n").split(b"\t")[:key_fields])
        partitions[zlib.crc32(map_key) % reducers].append(line)
    out_bucket, out_key = split_uri(options["-output"])
    for index, lines in enumerate(partitions):
        reduced = subprocess.run(command(options["-reducer"]), input=b"".join(sorted(lines)), capture_output=True,
                                 check=True, cwd=task, env=task_env).stdout
        s3.put_object(Bucket=out_bucket, Key=f"{out_key}part-{index:05d}", Body=reduced)
    s3.put_object(Bucket=out_bucket, Key=f"{out_key}_SUCCESS", Body=b"")


def play_cluster(cluster_id: str, work: Path, seen: list[int], fail: str | None = None):
    """A `sleep` for the runner that plays the cluster: it runs every pending step (or fails the
    one whose name contains `fail`), and notes how many steps the cluster had each time."""
    def sleep(_seconds):
        seen.append(len(cluster_steps(cluster_id)))
        for step in cluster_steps(cluster_id):
            if step.state in ("COMPLETED", "FAILED"):
                continue
            if fail and fail in step.name:
                step.state = "FAILED"
                continue
            run_streaming_step(step.args, work)
            step.state = "COMPLETED"
    return sleep


def test_emr_runs_the_stages_as_two_steps_in_turn(aws, tmp_path):
    cluster_id = running_cluster()
    seen: list[int] = []
    options = emr.EmrOptions(cluster_id=cluster_id, s3_prefix=PREFIX, poll_seconds=0)
    spec = JobSpec(input=str(INPUT), output_dir=tmp_path / "out", reducers=2, job="duplicates")
    result = emr.run_emr(spec, aws, options, sleep=play_cluster(cluster_id, tmp_path, seen))

    s3 = boto3.client("s3", region_name=REGION)
    for script in (DUPLICATES_MAPPER, DUPLICATES_REDUCER, DUPLICATES_GROUPS, STREAMING_COMMON):  # each once
        assert s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}code/{script.name}")["Body"].read() == script.read_bytes()
    base = f"s3://{BUCKET}/{PREFIX}"
    first, second = cluster_steps(cluster_id)
    stages = duplicate_stages(spec)
    assert first.args == emr.stage_step_definition(
        stages[0], number=1, of=2, input_uri=f"{base}input/input.csv", output_uri=f"{base}stage-candidates/",
        file_uris=[f"{base}code/duplicates_mapper.py", f"{base}code/duplicates_reducer.py",
                   f"{base}code/streaming_common.py"], reducers=2)["HadoopJarStep"]["Args"]
    assert second.args == emr.stage_step_definition(
        stages[1], number=2, of=2, input_uri=f"{base}stage-candidates/", output_uri=f"{base}output/",
        file_uris=[f"{base}code/duplicates_groups.py", f"{base}code/streaming_common.py"], reducers=2)["HadoopJarStep"]["Args"]
    assert second.args[second.args.index("-numReduceTasks") + 1] == "1"
    assert (first.name, second.name) == ("imgpipe duplicates, stage 1 of 2: candidates",
                                         "imgpipe duplicates, stage 2 of 2: groups")
    assert (first.action_on_failure, second.action_on_failure) == ("CONTINUE", "CONTINUE")
    assert seen[0] == 1, "the second step is added after the first completed"
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}stage-candidates/part-")["Contents"]
    assert len(listed) == 2, "stage 1 ran with two reducers"

    assert [p.name for p in result.parts] == ["part-00000"]
    assert (tmp_path / "out" / "duplicates.tsv").read_text(encoding="utf-8") == golden_groups()
    assert (result.runner, result.rows_in, result.groups_out) == ("emr", 43, 8)


def test_a_failed_first_step_stops_the_chain(aws, tmp_path):
    cluster_id = running_cluster()
    seen: list[int] = []
    options = emr.EmrOptions(cluster_id=cluster_id, s3_prefix=PREFIX, poll_seconds=0)
    spec = JobSpec(input=str(INPUT), output_dir=tmp_path / "out", job="duplicates")
    with pytest.raises(JobFailed, match="FAILED"):
        emr.run_emr(spec, aws, options, sleep=play_cluster(cluster_id, tmp_path, seen, fail="candidates"))
    assert len(cluster_steps(cluster_id)) == 1
    assert not (tmp_path / "out" / "duplicates.tsv").exists()


def test_emr_cli_runs_the_duplicates_job(aws, tmp_path, monkeypatch, capsys):
    cluster_id = running_cluster()
    monkeypatch.setenv("S3_ENDPOINT_URL", "")
    monkeypatch.setenv("S3_BUCKET", BUCKET)
    monkeypatch.setenv("AWS_REGION", REGION)
    real_run_emr = emr.run_emr
    sleep = play_cluster(cluster_id, tmp_path, [])
    monkeypatch.setattr(emr, "run_emr", lambda *args, **kwargs: real_run_emr(*args, **kwargs, sleep=sleep))
    code = run_job.main(["--runner", "emr", "--job", "duplicates", "--threshold", str(T), "--cluster-id", cluster_id,
                         "--input", str(INPUT), "--output", str(tmp_path / "out"), "--poll-seconds", "0",
                         "--s3-prefix", PREFIX])
    assert code == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith("runner emr: 43 rows in, 8 groups out,")
    assert (tmp_path / "out" / "part-00000").read_text(encoding="utf-8") == golden_groups()
