"""visualize/: counts from the real index's facets and documents read from it (past maxTotalHits),
tables, charts whose numbers equal the index's, thumbnail previews from S3, and the script's exit
codes. tests/test_visualize_aggregates.py compares the facet counts with the documents' at length."""
from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from imgpipe import meili, s3
from imgpipe.document import EXPORT_COLUMNS
from imgpipe.settings import Settings
from tests.helpers import admin
from tests.test_visualize_data import (BASE_TIME, PYTHON, REPO, index_documents, make_doc, script_env, search_only,
                                      upload_thumbnails)
from visualize import charts
from visualize.aggregates import from_frame, from_index, top_documents
from visualize.documents import read_csv, to_frame
from visualize.mapreduce_output import find_output, ordered, parse_lines, read_summary
from visualize.previews import fetch_thumbnails, preview_grid
from visualize.tables import image_rows, parse_sort, recent_images, render, summary_tables, totals
from visualize.report import main, read_index

SUMMARY_LINES = [
    "format\tjpeg\t6\t600.0\t10.0\t200.0\t100.0",
    "format\tpng\t3\t90.0\t10.0\t50.0\t30.0",
    "size_bucket\t>1000KB\t1\t1500.0\t1500.0\t1500.0\t1500.0",
    "size_bucket\t<50KB\t5\t100.0\t10.0\t40.0\t20.0",
    "size_bucket\t50-200KB\t4\t400.0\t60.0\t150.0\t100.0",
    "hour\t13\t2\t20.0\t10.0\t10.0\t10.0",
    "hour\t07\t8\t80.0\t10.0\t10.0\t10.0",
    "day\t2025-11-25\t4\t40.0\t10.0\t10.0\t10.0",
    "day\t2025-11-24\t6\t60.0\t10.0\t10.0\t10.0",
    "faces\t10\t1\t10.0\t10.0\t10.0\t10.0",
    "faces\t2\t9\t90.0\t10.0\t10.0\t10.0",
]


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()  # a truncated file fails here
        return image.size


def expected_size(chart) -> tuple[int, int]:
    width, height = chart.figure.get_size_inches() * charts.DPI
    return round(width), round(height)


def write_summary(directory: Path, lines=SUMMARY_LINES) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    half = len(lines) // 2
    (directory / "part-00000").write_text("\n".join(lines[:half]) + "\n")
    (directory / "part-00001").write_text("\n".join(lines[half:]) + "\n")
    (directory / "_SUCCESS").write_text("")
    return directory


# --- MapReduce output: pure parsing ---------------------------------------------------------

def test_summary_lines_parse_and_bad_lines_are_counted():
    rows, skipped = parse_lines(SUMMARY_LINES + ["", "garbage", "format\tgif\tnot-a-number"])
    assert skipped == 2
    assert len(rows) == len(SUMMARY_LINES)
    assert rows[0] == {"dimension": "format", "value": "jpeg", "count": 6, "total_kb": 600.0, "min_kb": 10.0,
                       "max_kb": 200.0, "mean_kb": 100.0}


def test_summary_values_are_shown_in_a_sensible_order(tmp_path):
    summary = read_summary(write_summary(tmp_path / "mr"))
    frame = summary.frame

    def values(dimension):
        return list(ordered(frame[frame["dimension"] == dimension])["value"])

    assert values("size_bucket") == ["<50KB", "50-200KB", ">1000KB"]
    assert values("hour") == ["07", "13"]
    assert values("day") == ["2025-11-24", "2025-11-25"]
    assert values("faces") == ["2", "10"]
    assert values("format") == ["jpeg", "png"]


def test_a_pair_split_across_part_files_is_merged(tmp_path):
    out = tmp_path / "mr"
    write_summary(out, ["format\tjpeg\t2\t20.0\t5.0\t15.0\t10.0", "format\tjpeg\t3\t90.0\t10.0\t50.0\t30.0"])
    frame = read_summary(out).frame
    assert frame.to_dict("records") == [{"dimension": "format", "value": "jpeg", "count": 5, "total_kb": 110.0,
                                         "min_kb": 5.0, "max_kb": 50.0, "mean_kb": 22.0}]


def test_the_latest_output_directory_is_found(tmp_path):
    assert find_output(tmp_path / "missing") is None
    assert find_output(tmp_path) is None
    old = write_summary(tmp_path / "run-1")
    new = write_summary(tmp_path / "run-2")
    os.utime(old / "part-00000", (1, 1))
    os.utime(old / "part-00001", (1, 1))
    assert find_output(tmp_path) == new
    write_summary(tmp_path)  # part files right in the directory win
    assert find_output(tmp_path) == tmp_path


def test_the_reducers_golden_output_reads_cleanly(tmp_path):
    """The contract with mapreduce/reducer.py: its golden part file parses without a skipped
    line, and every dimension counts the same images."""
    golden = REPO / "tests" / "golden" / "mapreduce" / "part-00000"
    (tmp_path / "part-00000").write_bytes(golden.read_bytes())
    summary = read_summary(tmp_path)
    assert summary.skipped_lines == 0
    lines = [line for line in golden.read_text().splitlines() if line.strip()]
    assert len(summary.frame) == len(lines)
    per_dimension = summary.frame.groupby("dimension")["count"].sum()
    assert per_dimension.nunique() == 1, per_dimension.to_dict()
    chart = charts.mapreduce_summary(summary.frame)
    hours = chart.data[chart.data["dimension"] == "hour"]
    assert list(hours["value"]) == [f"{h:02d}" for h in range(24)]
    assert int(chart.data["count"].sum()) == int(summary.frame["count"].sum())


# --- tables and charts from an in-memory frame ----------------------------------------------

def test_sort_option_is_checked():
    assert parse_sort("size_kb:desc") == ("size_kb", False)
    assert parse_sort("timestamp") == ("timestamp", True)
    from imgpipe.errors import UserError

    with pytest.raises(UserError, match="cannot sort by 'nope'"):
        parse_sort("nope:asc")
    with pytest.raises(UserError, match="asc or desc"):
        parse_sort("size_kb:down")


def test_summary_tables_render_every_dimension(tmp_path):
    tables = dict(summary_tables(read_summary(write_summary(tmp_path / "mr")).frame))
    assert list(tables) == ["format", "size_bucket", "faces", "hour", "day"]
    assert "50-200KB" in tables["size_bucket"] and "1,500.0" in tables["size_bucket"]


def test_size_histogram_bins_cover_every_image():
    from imgpipe.document import SIZE_BIN_EDGES_KB

    settings = Settings()
    frame = to_frame([make_doc(i, settings) for i in range(200)])
    chart = charts.size_histogram(from_frame(frame, "test"))
    assert int(chart.data["images"].sum()) == 200
    assert chart.data["from_kb"].iloc[0] <= frame["size_kb"].min()
    assert chart.data["to_kb"].iloc[-1] > frame["size_kb"].max()
    assert 8 <= len(chart.data) <= 40
    # Fixed bins, one after the other: what a facet on size_bin_kb counts.
    first = SIZE_BIN_EDGES_KB.index(chart.data["from_kb"].iloc[0])
    assert list(chart.data["from_kb"]) == list(SIZE_BIN_EDGES_KB[first:first + len(chart.data)])
    assert list(chart.data["to_kb"].iloc[:-1]) == list(chart.data["from_kb"].iloc[1:])
    # One size for every image still gives one bar, not a crash.
    same = to_frame([make_doc(i, settings, size_kb=12.5) for i in range(3)])
    data = charts.size_histogram(from_frame(same, "test")).data
    assert data.to_dict("records") == [{"from_kb": 12.5, "to_kb": 16.0, "images": 3}]


# --- reading the real index -----------------------------------------------------------------

@pytest.mark.integration
def test_every_document_is_read_with_the_search_key_past_max_total_hits(settings):
    tie = BASE_TIME + 10_000_000
    docs = [make_doc(i, settings) for i in range(1200)]
    # A bulk upload: 1,300 objects with the same LastModified second, 1,050 of them also the
    # same size, so reading must split that group twice to get past the 1,000-hit cap.
    docs += [make_doc(i, settings, timestamp=tie, size_kb=100.0, nulls=() if i < 2250 else ("size_kb",)) for i in range(1200, 2500)]
    docs += [{k: v for k, v in make_doc(i, settings).items() if k != "timestamp"} for i in range(2500, 2503)]
    index_documents(settings, docs)
    assert len(docs) == 2503 > meili.PAGE_SIZE

    # A key that may only search (as MeiliSearch's default search key), not read documents: the
    # reader walks the index by search alone.
    master = meili.client(settings, key=settings.meili_master_key)
    key = master.create_key({"name": f"test search only {settings.meili_index}", "actions": ["search"],
                             "indexes": [settings.meili_index], "expiresAt": None})
    try:
        reader = search_only(settings.with_overrides(meili_search_key=key.key))
        progress = []
        documents = meili.DocumentReader(reader, reader.meili_index, on_progress=progress.append)
        got = list(documents)
    finally:
        master.delete_key(key.key)
    assert documents.method == "search (keyset, search key)"
    assert sorted(d["id"] for d in got) == sorted(d["id"] for d in docs)
    by_id = {d["id"]: d for d in got}
    # Every field comes back as sent (the descriptor is MeiliSearch's, not shown by search).
    assert all(by_id[d["id"]] == {k: v for k, v in d.items() if k != "_vectors"} for d in docs)
    assert progress[-1] == 2503


@pytest.mark.integration
def test_an_index_without_index_settings_still_shows_its_first_page(settings):
    docs = [make_doc(i, settings) for i in range(30)]
    index_documents(settings, docs, apply_settings=False)
    frame = read_index(search_only(settings), show_progress=False)
    assert sorted(frame["id"]) == sorted(d["id"] for d in docs)


@pytest.fixture
def known_index(settings):
    """60 known documents in the isolated index, thumbnails uploaded for all but photo_00058."""
    docs = [make_doc(i, settings) for i in range(60)]
    index_documents(settings, docs)
    upload_thumbnails(settings, [d for d in docs if d["file_name"] != "photo_00058.png"])
    return docs


@pytest.mark.integration
def test_chart_numbers_equal_the_index(settings, known_index, tmp_path):
    docs = known_index
    counts = from_index(search_only(settings), settings.meili_index)
    assert counts.method == "facets" and counts.images == 60

    size = charts.size_histogram(counts)
    assert int(size.data["images"].sum()) == 60
    sizes = [d["size_kb"] for d in docs]
    assert [sum(1 for kb in sizes if row["from_kb"] <= kb < row["to_kb"]) for row in size.data.to_dict("records")] \
        == size.data["images"].tolist()
    hours = charts.hour_distribution(counts)
    expected_hours = Counter(int(d["processed_at"][11:13]) for d in docs)
    assert list(hours.data.index) == list(range(24))
    assert hours.data.to_dict() == {h: expected_hours.get(h, 0) for h in range(24)}
    formats = charts.format_breakdown(counts)
    assert formats.data.to_dict() == dict(Counter(d["format"] for d in docs))
    assert list(formats.data.index) == ["jpeg", "png", "webp"]  # most common first
    faces = charts.face_distribution(counts)
    counts = Counter(d["faces"] for d in docs)
    assert faces.data.to_dict() == {"0": counts[0], "1": counts[1], "2": counts[2], "3": counts[3],
                                    **{str(n): 0 for n in range(4, 10)}, "10+": counts[12]}
    summary = charts.mapreduce_summary(read_summary(write_summary(tmp_path / "mr")).frame)
    assert int(summary.data["count"].sum()) == sum(int(line.split("\t")[2]) for line in SUMMARY_LINES)

    for chart in (size, hours, formats, faces, summary):
        path = tmp_path / f"{chart.name}.png"
        chart.figure.savefig(path, dpi=charts.DPI)
        assert png_size(path) == expected_size(chart)
        axes = chart.figure.axes
        assert all(ax.get_xlabel() and ax.get_ylabel() and ax.get_title() for ax in axes), chart.name
    assert png_size(tmp_path / "size_distribution.png") == (900, 500)

    # The same charts from every document read: the same numbers.
    every = from_frame(read_index(search_only(settings), show_progress=False), "test")
    for chart in charts.distribution_charts(every):
        assert chart.data.equals({c.name: c for c in (size, hours, formats, faces)}[chart.name].data), chart.name


@pytest.mark.integration
def test_recent_images_table_and_totals(settings, known_index):
    reader = search_only(settings)
    recent = to_frame(top_documents(reader, reader.meili_index, "timestamp:desc", 3))
    frame = read_index(reader, show_progress=False)
    assert recent["id"].tolist() == recent_images(frame, limit=3, sort="timestamp:desc")["id"].tolist()
    assert list(recent["file_name"]) == ["photo_00059.webp", "photo_00058.png", "photo_00057.png"]
    rows = image_rows(recent)
    doc = known_index[59]
    assert rows[0] == ["photo_00059.webp", doc["size_kb"], f"{doc['width']}×{doc['height']}", "webp",
                       str(doc["faces"]), "2025-11-24 16:36:23"]
    text = render(rows, ["file_name", "size_kb", "width×height", "format", "faces", "timestamp (UTC)"])
    assert "photo_00057.png" in text and "2025-11-24 16:36:23" in text
    by_size = top_documents(reader, reader.meili_index, "size_kb:desc", 1)
    assert by_size[0]["size_kb"] == max(d["size_kb"] for d in known_index)
    counts = from_index(reader, reader.meili_index)
    block = dict(totals(counts, dead_lettered=4))
    assert block["images"] == "60"
    assert block["dead-lettered"] == "4"
    assert "dead-lettered" not in dict(totals(counts))
    assert block["images with faces"] == str(sum(1 for d in known_index if d["faces"] > 0))


@pytest.mark.integration
def test_previews_skip_a_missing_thumbnail_and_name_it(settings, known_index, tmp_path):
    reader = search_only(settings)
    recent = top_documents(reader, reader.meili_index, "timestamp:desc", 15)
    thumbs, skipped = fetch_thumbnails(s3.client(settings), settings.s3_bucket, recent, limit=5)
    assert [t.file_name for t in thumbs] == ["photo_00059.webp", "photo_00057.png", "photo_00056.png",
                                             "photo_00055.jpeg", "photo_00054.jpeg"]
    assert [(s.file_name, s.reason) for s in skipped] == [("photo_00058.png", "thumbnail not found")]
    assert skipped[0].key == known_index[58]["thumbnail_key"]
    assert thumbs[0].pixels.shape == (192, 256, 3)

    chart = preview_grid(thumbs)
    assert list(chart.data["file_name"]) == [t.file_name for t in thumbs]
    path = tmp_path / "previews.png"
    chart.figure.savefig(path, dpi=charts.DPI)
    assert png_size(path) == expected_size(chart)
    assert [ax.get_title().split("\n")[0] for ax in chart.figure.axes] == [t.file_name for t in thumbs]


# --- the script ------------------------------------------------------------------------------

@pytest.mark.integration
def test_script_prints_tables_and_writes_every_png(settings, known_index, tmp_path):
    mapreduce = write_summary(tmp_path / "mapreduce" / "run-1")
    summary_file = tmp_path / "consumer_summary.json"
    summary_file.write_text(json.dumps({"dead_lettered": 7}))
    out = tmp_path / "charts"
    result = subprocess.run(
        [PYTHON, "visualize/report.py", "--out", str(out), "--mapreduce-dir", str(tmp_path / "mapreduce"),
         "--duplicates-dir", str(tmp_path / "no-duplicates"),
         "--consumer-summary", str(summary_file), "--limit", "4", "--tablefmt", "github"],
        cwd=REPO, env=script_env(settings), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    stdout = result.stdout
    assert "Most recent images (4 of 60, by timestamp:desc)" in stdout
    assert "| photo_00059.webp" in stdout and "photo_00055.jpeg" not in stdout.split("MapReduce")[0]
    assert f"MapReduce summary by size_bucket ({mapreduce})" in stdout
    assert "| dead-lettered" in stdout and "| 7 " in stdout
    names = ["size_distribution", "processing_hours", "formats", "faces", "mapreduce_summary", "previews"]
    for name in names:
        path = out / f"{name}.png"
        assert f"wrote {path}  (numbers: " in stdout
        width, height = png_size(path)
        assert width >= 400 and height >= 250
    assert png_size(out / "size_distribution.png") == (900, 500)
    assert png_size(out / "previews.png") == (1400, 290)  # 5 thumbnails of 4:3
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.png" for n in names)
    assert "preview of photo_00058.png skipped: thumbnail not found" in result.stderr
    assert known_index[58]["thumbnail_key"] in result.stderr
    assert "Traceback" not in result.stderr
    # Counted with facets, 15 documents read (the table's 4 and 3 candidates per preview slot).
    index = settings.meili_index
    assert f"wrote {out / 'formats.png'}  (numbers: MeiliSearch facets of index '{index}': format)" in stdout
    assert f"wrote {out / 'mapreduce_summary.png'}  (numbers: MapReduce output {mapreduce})" in stdout
    assert f"60 images from index '{index}' (MeiliSearch facets, 15 documents read), 6 PNG file(s)" in stdout
    assert f"Totals (counts: MeiliSearch facets of index '{index}'; sizes: bounds from the size bins)" in stdout
    # The fake MapReduce output counts 9 images, not 60: its sizes are not used, and that is said.
    assert "counts 9 images and the index 60: its sizes are left out" in result.stderr


@pytest.mark.integration
def test_csv_input_gives_the_same_charts(settings, known_index, tmp_path, monkeypatch, capsys):
    import pandas as pd

    csv = tmp_path / "metadata.csv"
    pd.DataFrame(known_index, columns=list(EXPORT_COLUMNS)).to_csv(csv, index=False)
    from_csv = read_csv(csv)
    csv_counts = from_frame(from_csv, str(csv))
    facets = from_index(search_only(settings), settings.meili_index)
    for csv_chart, index_chart in zip(charts.distribution_charts(csv_counts), charts.distribution_charts(facets)):
        assert csv_chart.data.equals(index_chart.data), csv_chart.name
    assert from_csv["phash"].tolist() == [d["phash"] for d in known_index]  # hex stays text

    monkeypatch.setenv("MEILI_URL", "http://127.0.0.1:9")  # --csv must not need MeiliSearch
    code = main(["--csv", str(csv), "--previews", "0", "--out", str(tmp_path / "out"),
                 "--mapreduce-dir", str(tmp_path / "none")])
    assert code == 0
    assert "60 images from " in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "faces.png", "formats.png", "processing_hours.png", "size_distribution.png"]


@pytest.mark.integration
@pytest.mark.parametrize("create", [True, False], ids=["empty-index", "no-index"])
def test_empty_or_missing_index_exits_0_with_a_message(settings, tmp_path, monkeypatch, capsys, create):
    if create:
        index_documents(settings, [])
    else:  # the fixture made it, as every set-up does
        meili.delete_index(admin(settings), settings.meili_index)
    for name, value in script_env(settings).items():
        monkeypatch.setenv(name, value)
    code = main(["--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 0
    if create:
        assert f"index '{settings.meili_index}' has no documents: nothing to show" in captured.out
    else:
        assert f"index '{settings.meili_index}' does not exist yet" in captured.out
    assert not (tmp_path / "out").exists()


@pytest.mark.integration
def test_unreachable_meilisearch_is_one_line_and_exit_1(settings, tmp_path):
    result = subprocess.run([PYTHON, "visualize/report.py", "--out", str(tmp_path)], cwd=REPO,
                            env=script_env(settings, MEILI_URL="http://127.0.0.1:9"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: meilisearch: cannot reach http://127.0.0.1:9 (connection failed; is MeiliSearch running? "
        "`make up` starts the local one)"]


def test_bad_options_exit_2_without_traceback(tmp_path, capsys):
    assert main(["--sort", "bogus:desc", "--csv", str(tmp_path / "x.csv")]) == 2
    assert capsys.readouterr().err.startswith("error: cannot sort by 'bogus'")
    assert main(["--csv", str(tmp_path / "missing.csv")]) == 2
    assert capsys.readouterr().err.strip() == f"error: CSV file not found: {tmp_path / 'missing.csv'}"
    assert main(["--previews", "9"]) == 2
