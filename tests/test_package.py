"""imgpipe is an installable package: every script is a console script of it as well as a file you
can run, and no script finds its imports by editing sys.path (or a .pth file written for it)."""
from __future__ import annotations

import ast
import site
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

import imgpipe

REPO_ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
SCRIPTS: dict[str, str] = PYPROJECT["project"]["scripts"]  # console script -> "module:function"


def module_file(target: str) -> Path:
    module = target.split(":")[0]
    return REPO_ROOT / (module.replace(".", "/") + ".py")


def test_the_version_is_the_pipelines():
    assert PYPROJECT["project"]["version"] == imgpipe.PIPELINE_VERSION


def test_the_installed_console_scripts_are_pyprojects():
    """`make` installed this tree editable: a script added to pyproject.toml without reinstalling
    (or an old .venv) shows up here rather than as a missing command."""
    installed = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")
                 if ep.name.startswith("imgpipe-")}
    assert installed == SCRIPTS
    assert metadata.distribution("imgpipe").version == imgpipe.PIPELINE_VERSION


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_each_console_script_and_its_file_show_help(name, tmp_path):
    """Run from elsewhere, the console script imports through the installed package; run as a
    file from the repo root (its folder first on sys.path), nothing in that folder shadows a package."""
    command = Path(sys.executable).parent / name
    by_script = subprocess.run([str(command), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert by_script.returncode == 0, by_script.stderr
    assert "example" in by_script.stdout.lower()
    script = module_file(SCRIPTS[name])
    by_file = subprocess.run([sys.executable, str(script.relative_to(REPO_ROOT)), "--help"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=120)
    assert by_file.returncode == 0, by_file.stderr
    assert by_file.stdout == by_script.stdout


def is_sys_path(node: ast.AST) -> bool:
    if isinstance(node, ast.Subscript):
        node = node.value
    return (isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
            and node.value.id == "sys")


def sys_path_edits(tree: ast.AST) -> list[int]:
    """Lines that change sys.path: sys.path.insert(...) & co., or an assignment to it or an item of it."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and is_sys_path(node.func.value):
            lines.append(node.lineno)
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            lines += [node.lineno for target in targets if is_sys_path(target)]
    return sorted(lines)


def test_the_check_finds_the_edits_scripts_used_to_make():
    old_header = "import sys\nif __package__ in (None, ''):\n    sys.path.insert(0, '..')\nsys.path[0] = 'x'\n"
    assert sys_path_edits(ast.parse(old_header)) == [3, 4]
    assert sys_path_edits(ast.parse("import sys\nprint(sys.path)\n")) == []


def test_no_file_edits_sys_path():
    """The package is installed, so nothing needs to. (A string that a test runs under another
    Python, like tests/test_mapreduce_duplicates.py's probe, is not code of the tree.)"""
    offenders = []
    for path in sorted(REPO_ROOT.glob("**/*.py")):
        if any(part.startswith(".") for part in path.relative_to(REPO_ROOT).parts):
            continue  # .venv, .local
        tree = ast.parse(path.read_text(), str(path))
        offenders += [f"{path.relative_to(REPO_ROOT)}:{line}" for line in sys_path_edits(tree)]
    assert offenders == []


def test_nothing_writes_a_pth_file():
    for name in ("Makefile", "deploy/host/setup.sh"):
        text = (REPO_ROOT / name).read_text()
        assert "pip install" in text and "--no-deps -e" in text, name
        assert "write_text" not in text, name  # the .pth the package replaced
    assert not (Path(site.getsitepackages()[0]) / "imgpipe-repo.pth").exists()


def test_no_script_folder_holds_a_module_named_like_a_package():
    """Run as a file, a script's own folder comes first on sys.path: a module there named like one
    of our packages (visualize/visualize.py once) would be imported instead of the package."""
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    for folder in {module_file(target).parent for target in SCRIPTS.values()}:
        assert not [p.name for p in folder.glob("*.py") if p.stem in packages], folder


def test_whole_number_options_share_one_range_rule():
    """Scripts state their options' ranges, cli.check_ranges says what is wrong (all of it at once)."""
    import argparse

    from imgpipe import cli
    from imgpipe.errors import UserError

    ranges = {"limit": (1, None), "offset": (0, None), "previews": (0, 5), "port": (None, 65535)}
    cli.check_ranges(argparse.Namespace(limit=1, offset=0, previews=5, port=None), ranges)
    with pytest.raises(UserError) as err:
        cli.check_ranges(argparse.Namespace(limit=0, offset=-1, previews=6, port=70000), ranges)
    assert str(err.value) == ("--limit must be at least 1, got 0; --offset must be 0 or more, got -1; "
                              "--previews must be between 0 and 5, got 6; --port must be at most 65535, got 70000")


def test_summary_json_is_written_where_asked_and_an_unwritable_path_is_a_clear_user_error(tmp_path):
    import json

    import pytest

    from imgpipe import cli
    from imgpipe.errors import UserError

    cli.write_summary_json(None, {"sent": 1})  # no --summary-json: nothing written, nothing raised
    target = tmp_path / "runs" / "today" / "summary.json"
    cli.write_summary_json(target, {"sent": 3, "failed": 0})
    assert json.loads(target.read_text()) == {"sent": 3, "failed": 0}
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UserError) as caught:
        cli.write_summary_json(blocker / "summary.json", {"sent": 3})
    assert str(blocker / "summary.json") in str(caught.value)
