"""visualize/search.py against the real index, read with the search-only key: filters return
exactly the expected documents, sorts order them, and wrong requests exit 2 in one line."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.test_visualize_data import PYTHON, REPO, index_documents, make_doc, script_env, search_only
from visualize.search import main, run_search

pytestmark = pytest.mark.integration


@pytest.fixture
def docs(settings):
    docs = [make_doc(i, settings) for i in range(40)]
    docs += [make_doc(40, settings, name="cat on a sofa.jpeg"), make_doc(47, settings, name="black cat.png")]
    index_documents(settings, docs)
    return docs


@pytest.fixture
def env(settings, monkeypatch):
    for name, value in script_env(settings).items():
        monkeypatch.setenv(name, value)


def ids(hits):
    return sorted(h["id"] for h in hits)


@pytest.mark.parametrize("filter_, expected", [
    ('faces > 0 AND format = "jpeg"', lambda d: d["faces"] > 0 and d["format"] == "jpeg"),
    ("size_kb > 200", lambda d: d["size_kb"] > 200),
    ('width >= 1920 OR format = "webp"', lambda d: d["width"] >= 1920 or d["format"] == "webp"),
    ("faces = 0 AND timestamp < 1764000500", lambda d: d["faces"] == 0 and d["timestamp"] < 1764000500),
])
def test_filters_return_exactly_the_expected_documents(settings, docs, filter_, expected):
    response = run_search(search_only(settings), "", {"filter": filter_, "limit": 1000})
    wanted = ids(d for d in docs if expected(d))
    assert wanted, "the filter should select something"
    assert ids(response["hits"]) == wanted


def test_query_sort_and_limit(settings, docs):
    reader = search_only(settings)
    assert sorted(h["file_name"] for h in run_search(reader, "cat", {"limit": 50})["hits"]) == [
        "black cat.png", "cat on a sofa.jpeg"]
    newest = run_search(reader, "", {"sort": ["timestamp:desc"], "limit": 5})["hits"]
    assert [h["id"] for h in newest] == [d["id"] for d in sorted(docs, key=lambda d: -d["timestamp"])[:5]]
    biggest = run_search(reader, "", {"sort": ["size_kb:desc"], "filter": 'format = "png"', "limit": 3})["hits"]
    pngs = sorted((d for d in docs if d["format"] == "png"), key=lambda d: -d["size_kb"])
    assert [h["id"] for h in biggest] == [d["id"] for d in pngs[:3]]


def test_table_output(docs, env, capsys):
    assert main(["cat", "--filter", 'format = "png"', "--sort", "timestamp:desc"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["file_name", "size_kb", "width×height"]
    assert "black cat.png" in out and "sofa" not in out
    assert lines[-1].startswith("search: 1 of about 1 hits for 'cat'")


def test_json_output_in_a_subprocess(settings, docs):
    result = subprocess.run([PYTHON, "visualize/search.py", "--filter", "faces >= 2", "--json", "--limit", "100"],
                            cwd=REPO, env=script_env(settings), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)
    assert ids(hits) == ids(d for d in docs if d["faces"] >= 2)
    assert result.stderr.startswith(f"search: {len(hits)} of about {len(hits)} hits")


def test_bad_filter_is_one_line_and_exit_2(settings, docs):
    result = subprocess.run([PYTHON, "visualize/search.py", "cat", "--filter", "faces >"], cwd=REPO,
                            env=script_env(settings), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "error: invalid filter: Was expecting a value but instead got nothing. (characters 8-8 of: faces >)"]


@pytest.mark.parametrize("argv, message", [
    (["--sort", "dominant_color:asc"],
     "error: invalid sort: Index `{index}`: Attribute `dominant_color` is not sortable"),
    (["--filter", "file_name = x"],
     "error: invalid filter: Index `{index}`: Attribute `file_name` is not filterable"),
    (["--index", "test_no_such_index_zz"], "error: no such index: Index `test_no_such_index_zz` not found."),
    (["--limit", "0"], "error: --limit must be at least 1"),
])
def test_wrong_requests_exit_2(settings, docs, env, capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message.format(index=settings.meili_index))
    assert len(err.strip().splitlines()) == 1


def test_unreachable_meilisearch_exits_1(settings, env, monkeypatch, capsys):
    monkeypatch.setenv("MEILI_URL", "http://127.0.0.1:9")
    assert main(["cat"]) == 1
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err
