"""The streaming scripts as a cluster runs them: standard library only, Python 3.7 (EMR 6.x), and
streaming_common.py found beside them only through the task's working directory."""
from __future__ import annotations

import ast
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mapreduce.runners.common import (DUPLICATES_GROUPS, DUPLICATES_MAPPER, DUPLICATES_REDUCER, MAPPER, REDUCER,
                                      STREAMING_COMMON, JobSpec, duplicate_stages)
from tests.helpers import require_python37

SCRIPTS = (MAPPER, REDUCER, DUPLICATES_MAPPER, DUPLICATES_REDUCER, DUPLICATES_GROUPS)
GOLDEN = Path(__file__).resolve().parent / "golden" / "mapreduce"


@pytest.mark.parametrize("path", SCRIPTS + (STREAMING_COMMON,), ids=lambda p: p.name)
def test_scripts_are_python37_stdlib_code(path):
    source = path.read_text(encoding="utf-8")
    if path in SCRIPTS:
        assert source.startswith("#!/usr/bin/env python3\n")
        assert path.stat().st_mode & stat.S_IXUSR, f"{path.name} must be executable (chmod +x)"
    tree = ast.parse(source, feature_version=(3, 7))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    allowed = set(sys.stdlib_module_names) | {STREAMING_COMMON.stem}
    assert imported <= allowed, f"not stdlib: {imported - allowed}"
    assert not any(isinstance(node, (ast.NamedExpr, ast.Match)) for node in ast.walk(tree))
    # `X | Y` in an annotation is evaluated at runtime on 3.7; there are no annotations at all.
    assert not any(getattr(node, "returns", None) or getattr(node, "annotation", None) for node in ast.walk(tree))


def test_every_stage_ships_the_common_module():
    """What a script imports must travel with it in -files: the runners build every stage from these."""
    stages = duplicate_stages(JobSpec(input="in.csv", output_dir=Path("out"), job="duplicates"))
    assert all(STREAMING_COMMON in stage.files for stage in stages)
    from mapreduce.runners.common import SUMMARY_FILES

    assert SUMMARY_FILES == (MAPPER, REDUCER, STREAMING_COMMON)


def task_directory(tmp_path: Path) -> Path:
    """What a streaming task sees: each -files entry localized in a folder of its own, and a
    symlink to each in the task's working directory (Hadoop's LocalJobRunner and YARN alike)."""
    work = tmp_path / "work"
    work.mkdir()
    for number, path in enumerate((MAPPER, REDUCER, STREAMING_COMMON)):
        cache = tmp_path / "filecache" / str(number)
        cache.mkdir(parents=True)
        shutil.copy2(path, cache / path.name)
        (work / path.name).symlink_to(cache / path.name)
    return work


@pytest.mark.parametrize("old_python", [False, True], ids=["python3", "python3.7"])
def test_the_common_module_is_found_through_the_working_directory_only(tmp_path, old_python):
    """Python resolves the script's symlink, so its own folder holds nothing else: without
    PYTHONPATH=. (the runners' -cmdenv) the import fails, with it the job runs as in the repo."""
    python = require_python37() if old_python else sys.executable
    work = task_directory(tmp_path)
    data = (GOLDEN / "input.csv").read_bytes()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    alone = subprocess.run([python, "mapper.py"], cwd=work, input=data, capture_output=True, env=env)
    assert alone.returncode != 0 and b"No module named 'streaming_common'" in alone.stderr
    mapped = subprocess.run([python, "mapper.py"], cwd=work, input=data, capture_output=True,
                            env={**env, "PYTHONPATH": "."})
    assert mapped.returncode == 0, mapped.stderr
    reduced = subprocess.run([python, "reducer.py"], cwd=work, input=b"".join(sorted(mapped.stdout.splitlines(True))),
                             capture_output=True, env={**env, "PYTHONPATH": "."})
    assert reduced.returncode == 0, reduced.stderr
    assert reduced.stdout.decode() == (GOLDEN / "part-00000").read_text(encoding="utf-8")
