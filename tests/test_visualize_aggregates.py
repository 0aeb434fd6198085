"""visualize/aggregates.py: the counts MeiliSearch's facets give equal the counts of every document
of the same index, chart by chart and in the totals block, past the facet value limit too; what
facets cannot know (an exact total size, documents of an older consumer) is said, not guessed."""
from __future__ import annotations

import io
from collections import Counter

import pytest

from fixtures.documents import sample_documents
from imgpipe.document import FIELDS
from imgpipe.settings import Settings
from mapreduce import mapper, reducer
from mapreduce.export_csv import write_csv
from tests.test_visualize_data import PYTHON, REPO, index_documents, make_doc, script_env, search_only
from visualize import charts
from visualize.aggregates import MAX_FACE_BAR, from_frame, from_index, with_mapreduce
from visualize.documents import read_csv, to_frame
from visualize.mapreduce_output import combine, parse_lines
from visualize.tables import totals
from visualize.report import main, read_index


def both(settings):
    """(facet counts, counts of every document read) of the isolated index."""
    reader = search_only(settings)
    return (from_index(reader, reader.meili_index),
            from_frame(read_index(reader, show_progress=False), f"index {reader.meili_index!r}"))


def chart_data(counts) -> dict:
    return {chart.name: chart.data for chart in charts.distribution_charts(counts)}


def mapreduce_summary(docs: list[dict]):
    """What `run_job.py --runner pipe` makes of the export of `docs`, as visualize reads it."""
    from visualize.mapreduce_output import Summary

    csv = io.StringIO()
    write_csv(docs, csv)
    mapped, reduced = io.StringIO(), io.StringIO()
    mapper.main(stdin=iter(csv.getvalue().splitlines(keepends=True)), stdout=mapped, stderr=io.StringIO())
    reducer.main([], stdin=iter(sorted(mapped.getvalue().splitlines(keepends=True))), stdout=reduced,
                 stderr=io.StringIO())
    rows, skipped = parse_lines(reduced.getvalue().splitlines())
    assert skipped == 0
    return Summary(frame=combine(rows), source="pipe")


@pytest.mark.integration
def test_facets_and_every_document_agree_on_every_chart_and_the_totals(settings):
    docs = sample_documents(1500, seed=5)  # the awkward keys first
    index_documents(settings, docs)
    facets, documents = both(settings)
    assert facets.method == "facets" and documents.method == "documents"
    assert facets.images == documents.images == 1500

    for name, data in chart_data(facets).items():
        assert data.equals(chart_data(documents)[name]), name
    assert chart_data(facets)["formats"].to_dict() == dict(Counter(d["format"] for d in docs))
    assert chart_data(facets)["processing_hours"].to_dict() == {
        h: sum(1 for d in docs if int(d["processed_at"][11:13]) == h) for h in range(24)}

    # The totals block: every count the same; sizes exact from documents, bounded by facets.
    by_facets, by_documents = dict(totals(facets, 3)), dict(totals(documents, 3))
    sizes = ("total size", "mean size")
    assert {k: v for k, v in by_facets.items() if k not in sizes} == \
        {k: v for k, v in by_documents.items() if k not in sizes}
    assert by_facets["images with faces"] == f"{sum(1 for d in docs if d['faces'] > 0):,}"
    low, high = facets.size_bounds_kb
    assert low <= sum(d["size_kb"] for d in docs) < high
    assert by_facets["total size"].endswith("(bounds from the size bins)")

    # With the MapReduce output of the same documents, the sizes are exact too: the same block.
    exact = with_mapreduce(facets, mapreduce_summary(docs))
    assert exact.size_total_source == "MapReduce output pipe"
    assert totals(exact, 3) == totals(documents, 3)
    assert with_mapreduce(documents, mapreduce_summary(docs[:10])) is documents  # documents know better


@pytest.mark.integration
def test_face_counts_past_the_facet_value_limit_are_counted_exactly(settings):
    # 250 distinct face counts: more values than MeiliSearch returns for one facet (200 here).
    docs = [dict(make_doc(i, settings), faces=i % 250) for i in range(600)]
    index_documents(settings, docs)
    facets, documents = both(settings)
    assert facets.faces_max == documents.faces_max == 249
    assert facets.faces_many == sum(1 for d in docs if d["faces"] >= MAX_FACE_BAR)
    assert chart_data(facets)["faces"].equals(chart_data(documents)["faces"])
    assert chart_data(facets)["faces"].index[-1] == "10+"
    assert dict(totals(facets))["images with faces"] == dict(totals(documents))["images with faces"] == \
        f"{sum(1 for d in docs if d['faces']):,}"
    assert "faces >= 10" in facets.chart_sources["faces"]


@pytest.mark.integration
def test_documents_of_an_older_consumer_are_named_not_miscounted(settings):
    old = [{k: v for k, v in make_doc(i, settings).items() if k not in ("size_bin_kb", "processed_hour")}
           for i in range(20)]
    index_documents(settings, old + [make_doc(i, settings) for i in range(20, 50)])
    facets, documents = both(settings)
    assert facets.images == documents.images == 50
    assert facets.sized == 30 and sum(facets.hours.values()) == 30
    assert any("20 of 50 documents have no size_bin_kb" in note for note in facets.notes)
    assert any("20 of 50 documents have no processed_hour" in note for note in facets.notes)
    # Reading every document computes the missing fields as to_document would.
    assert documents.sized == 50 and sum(documents.hours.values()) == 50 and not documents.notes


def test_an_older_csv_without_the_new_columns_gets_them_computed(tmp_path):
    import pandas as pd

    settings = Settings()
    docs = [make_doc(i, settings) for i in range(40)]
    old_columns = [f for f in FIELDS if f not in ("size_bin_kb", "processed_hour")]
    pd.DataFrame(docs, columns=old_columns).to_csv(tmp_path / "old.csv", index=False)
    pd.DataFrame(docs, columns=list(FIELDS)).to_csv(tmp_path / "new.csv", index=False)
    old, new = (from_frame(read_csv(tmp_path / name), name) for name in ("old.csv", "new.csv"))
    for name, data in chart_data(old).items():
        assert data.equals(chart_data(new)[name]), name
    assert totals(old) == totals(new)


def test_no_documents_give_empty_charts_not_errors():
    empty = from_frame(to_frame([]), "nothing")
    assert empty.images == 0 and dict(totals(empty))["total size"] == "0.0 KiB"
    assert all(chart.data.sum() == 0 if chart.name != "size_distribution" else chart.data.empty
               for chart in charts.distribution_charts(empty))


@pytest.mark.integration
def test_the_script_counts_with_facets_and_reads_every_document_only_when_asked(settings, tmp_path, monkeypatch,
                                                                              capsys):
    index_documents(settings, [make_doc(i, settings) for i in range(40)])
    for name, value in script_env(settings).items():
        monkeypatch.setenv(name, value)
    common = ["--previews", "0", "--mapreduce-dir", str(tmp_path / "none"), "--duplicates-dir",
              str(tmp_path / "none"), "--out", str(tmp_path / "out")]
    assert main(common + ["--limit", "5"]) == 0
    out = capsys.readouterr().out
    assert f"40 images from index '{settings.meili_index}' (MeiliSearch facets, 5 documents read)" in out
    assert main(common + ["--all-documents", "--limit", "5"]) == 0
    out = capsys.readouterr().out
    assert f"40 images from index '{settings.meili_index}' (every document read)" in out
    assert "(numbers: every document (index " in out

    # Facets sort through MeiliSearch, by its sortable attributes; reading everything sorts by any field.
    assert main(common + ["--sort", "sha256:desc"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid sort:") and "--all-documents sorts by any field" in err
    assert "Traceback" not in err
    assert main(common + ["--sort", "sha256:desc", "--all-documents"]) == 0


@pytest.mark.integration
def test_an_index_without_its_settings_is_read_document_by_document(settings, tmp_path):
    import subprocess

    index_documents(settings, [make_doc(i, settings) for i in range(30)], apply_settings=False)
    result = subprocess.run([PYTHON, "visualize/report.py", "--previews", "0", "--out", str(tmp_path),
                             "--mapreduce-dir", str(tmp_path / "none"), "--duplicates-dir", str(tmp_path / "none"),
                             "--sort", "file_name"],
                            cwd=REPO, env=script_env(settings), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "cannot be counted with facets" in result.stderr and "reading every document instead" in result.stderr
    assert f"30 images from index '{settings.meili_index}' (every document read)" in result.stdout
