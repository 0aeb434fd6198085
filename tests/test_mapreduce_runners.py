"""run_job.py with the pipe runner and with the real Hadoop Streaming jar in local mode."""
from __future__ import annotations

from pathlib import Path

import pytest

from mapreduce import run_job
from tests.test_mapreduce_mapper import MALFORMED_REASONS
from mapreduce.runners import pipe
from mapreduce.runners.common import JobSpec, count_data_rows, prepare_output_dir, streaming_args

GOLDEN = Path(__file__).resolve().parent / "golden" / "mapreduce"
INPUT = GOLDEN / "input.csv"


def golden() -> str:
    return (GOLDEN / "part-00000").read_text(encoding="utf-8")


def test_pipe_runner_writes_the_golden_part_file(tmp_path, capsys):
    out = tmp_path / "summary"
    assert run_job.main(["--runner", "pipe", "--input", str(INPUT), "--output", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["_SUCCESS", "part-00000", "summary.tsv"]
    assert (out / "part-00000").read_text(encoding="utf-8") == golden()
    assert (out / "summary.tsv").read_text(encoding="utf-8") == golden()
    summary = capsys.readouterr().out
    assert summary.startswith("runner pipe: 46 rows in, 6 malformed rows skipped, 48 groups out,")
    assert str(out) in summary


@pytest.mark.parametrize("mappers", [2, 3, 7])
def test_pipe_runner_splits_the_input_between_mappers(tmp_path, mappers):
    result = pipe.run_pipe(JobSpec(input=str(INPUT), output_dir=tmp_path / "out"), mappers=mappers)
    assert (tmp_path / "out" / "part-00000").read_text(encoding="utf-8") == golden()
    assert result.counters["rows"] == 40 and result.counters["malformed_rows"] == 6
    assert result.counters["header_rows"] == 1


def test_split_ranges_cover_the_file_on_line_starts(tmp_path):
    data = INPUT.read_bytes()
    for parts in (1, 2, 5, 46, 200):
        ranges = pipe.split_ranges(INPUT, parts)
        assert ranges[0][0] == 0 and sum(length for _, length in ranges) == len(data)
        assert all(data[offset - 1:offset] == b"\n" for offset, _ in ranges[1:])
        assert all(a + n == b for (a, n), (b, _) in zip(ranges, ranges[1:]))


def test_identity_job_sorts_its_input(tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("b\t2\na\t1\nc\t3\n")
    assert run_job.main(["--input", str(source), "--output", str(tmp_path / "out"), "--identity"]) == 0
    assert (tmp_path / "out" / "part-00000").read_text() == "a\t1\nb\t2\nc\t3\n"


def test_an_existing_output_folder_is_a_usage_error(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-00000").write_text("old\n")
    for runner in ("pipe", "hadoop"):
        assert run_job.main(["--runner", runner, "--input", str(INPUT), "--output", str(out)]) == 2
        assert "already exists" in capsys.readouterr().err
    assert run_job.main(["--input", str(INPUT), "--output", str(out), "--overwrite"]) == 0
    assert (out / "part-00000").read_text(encoding="utf-8") == golden()


def test_overwrite_refuses_a_folder_that_is_not_a_job_output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="notes.txt"):
        prepare_output_dir(out, overwrite=True)
    assert (out / "notes.txt").exists()


@pytest.mark.parametrize("args, message", [
    (["--input", "nowhere.csv"], "is not a file"),
    (["--reducers", "2"], "one reducer"),
    (["--mappers", "0"], "at least 1"),
    (["--runner", "hadoop", "--mappers", "2"], "--mappers is for --runner pipe"),
    (["--split-size", "1000"], "--split-size"),
    (["--cluster-id", "j-1"], "for --runner emr"),
    (["--input", "s3://bucket/x.csv"], "reads a local file"),
])
def test_usage_errors_exit_2_with_one_line(tmp_path, capsys, args, message):
    argv = ["--input", str(INPUT), "--output", str(tmp_path / "out")] + args
    assert run_job.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_a_failing_mapper_fails_the_job_with_its_reason(tmp_path, monkeypatch, capsys):
    broken = tmp_path / "broken_mapper.py"
    broken.write_text("import sys\nsys.stdin.read()\nsys.exit('mapper: cannot read the input')\n")
    monkeypatch.setattr(pipe, "commands", lambda identity: (["python3", str(broken)], ["cat"]))
    assert run_job.main(["--input", str(INPUT), "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "job failed: mapper 0 exited with status 1" in err and "cannot read the input" in err


def test_streaming_arguments_are_what_a_user_types():
    assert streaming_args(input_uri="in.csv", output_uri="out", reducers=2, identity=False,
                          files=["/x/mapper.py", "/x/reducer.py", "/x/streaming_common.py"]) == [
        "-D", "stream.num.map.output.key.fields=2", "-D", "stream.num.reduce.output.key.fields=2",
        "-files", "/x/mapper.py,/x/reducer.py,/x/streaming_common.py", "-cmdenv", "PYTHONPATH=.",
        "-mapper", "mapper.py", "-combiner", "reducer.py --combiner", "-reducer", "reducer.py",
        "-numReduceTasks", "2", "-input", "in.csv", "-output", "out"]


def test_count_data_rows(tmp_path):
    assert count_data_rows(INPUT) == 46
    (tmp_path / "a.csv").write_bytes(b"x,y\n1,2")  # no header, no final newline
    assert count_data_rows(tmp_path / "a.csv") == 2


@pytest.mark.slow
def test_hadoop_runner_with_two_reducers_and_many_splits_matches_the_pipe_runner(tmp_path, capsys):
    """The real streaming jar: several map tasks (only the first sees the header), the reducer
    as combiner, two reduce tasks whose part files merge into the golden summary."""
    from imgpipe.settings import load_settings
    from mapreduce.runners.hadoop import run_hadoop

    out = tmp_path / "hadoop"
    result = run_hadoop(JobSpec(input=str(INPUT), output_dir=out, reducers=2), load_settings(), split_size=4096)
    assert sorted(p.name for p in out.glob("part-*")) == ["part-00000", "part-00001"]
    assert all(p.stat().st_size > 0 for p in result.parts), "both reducers got groups"
    assert (out / "_SUCCESS").exists()
    assert (out / "summary.tsv").read_text(encoding="utf-8") == golden()
    # 6 splits of at most 4096 bytes, each map's output shuffled to both reducers.
    assert result.framework_counters["Shuffled Maps"] == 2 * -(-INPUT.stat().st_size // 4096)
    assert result.framework_counters["Map input records"] == 47
    assert result.counters == {"header_rows": 1, "rows": 40, "malformed_rows": 6,
                               **{f"malformed_{k}": v for k, v in MALFORMED_REASONS.items()}}
    # Through the CLI, a second run into the same folder needs --overwrite and gives the golden file.
    assert run_job.main(["--runner", "hadoop", "--input", str(INPUT), "--output", str(out)]) == 2
    assert run_job.main(["--runner", "hadoop", "--input", str(INPUT), "--output", str(out), "--overwrite"]) == 0
    summary = capsys.readouterr().out
    assert summary.startswith("runner hadoop: 46 rows in, 6 malformed rows skipped, 48 groups out,")
    assert sorted(p.name for p in out.glob("part-*")) == ["part-00000"]
    assert (out / "part-00000").read_text(encoding="utf-8") == golden()


def test_input_ranges_reach_the_mappers_without_sendfile(tmp_path, monkeypatch):
    def no_sendfile(*args):
        raise OSError(22, "Invalid argument")
    monkeypatch.setattr(pipe.os, "sendfile", no_sendfile)
    pipe.run_pipe(JobSpec(input=str(INPUT), output_dir=tmp_path / "out"), mappers=2)
    assert (tmp_path / "out" / "part-00000").read_text(encoding="utf-8") == golden()
