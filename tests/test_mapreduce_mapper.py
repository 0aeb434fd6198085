"""mapper.py and reducer.py: pure functions, counters, golden output, and a result that does not
depend on input order, on how the input is split, or on how often the combiner runs."""
from __future__ import annotations

import csv
import io
import os
import random
import subprocess
import sys
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

from imgpipe.document import EXPORT_COLUMNS as FIELDS  # the CSV columns
from mapreduce import mapper, reducer
from mapreduce.export_csv import to_row, write_csv
from fixtures.documents import sample_documents
from tests.helpers import require_python37
from fixtures.keys import CSV_BREAKING_KEYS

GOLDEN = Path(__file__).resolve().parent / "golden" / "mapreduce"
SCRIPTS = (Path(mapper.__file__), Path(reducer.__file__))


# The golden input ----------------------------------------------------------------------------

def golden_documents() -> list[dict]:
    """The 40 documents of tests/golden/mapreduce/input.csv: the awkward keys, plus values on
    the edges of the size buckets, an upper-case format and a non-UTC timestamp."""
    docs = sample_documents(40, seed=11)
    docs[3]["processed_at"] = "2026-11-03T01:30:00.000+02:00"  # 2026-11-02, 23h UTC
    docs[4]["format"] = "JPEG"
    for doc, size in zip(docs[5:10], (49.99, 50.0, 199.99, 999.99, 1000.0)):
        doc["size_kb"] = size
    docs[10]["size_kb"] = 0.0
    return docs


def malformed_lines() -> list[str]:
    """One line per kind of bad row, each a reason the mapper counts."""
    def row(**changes) -> str:
        doc = dict(sample_documents(1, seed=99, awkward=False)[0], **changes)
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(to_row(doc))
        return buf.getvalue()

    unclosed = row(key="raw/unclosed.jpg").replace("raw/unclosed.jpg", '"raw/unclosed.jpg', 1)
    return [
        "0123abc,images,raw/truncated.jpg\n",  # wrong_field_count
        row(size_kb="big"),  # bad_size_kb
        row(size_kb=-5),  # bad_size_kb
        row(processed_at="yesterday"),  # bad_processed_at
        row(faces="-1"),  # bad_faces
        unclosed,  # bad_quoting; the good row after it must survive
    ]


MALFORMED_REASONS = {"wrong_field_count": 1, "bad_size_kb": 2, "bad_processed_at": 1, "bad_faces": 1,
                     "bad_quoting": 1}


def make_golden_input() -> str:
    """How input.csv was made (and is checked): the export of golden_documents() with the
    malformed lines spread between its rows."""
    buf = io.StringIO()
    write_csv(golden_documents(), buf)
    lines = buf.getvalue().splitlines(keepends=True)
    for position, bad in zip((6, 14, 23, 31, 38, 44), malformed_lines()):
        lines.insert(position, bad)
    return "".join(lines)


def expected_summary(docs: list[dict]) -> list[str]:
    """The summary computed the obvious way (Decimal, datetime), independently of mapper.py."""
    groups: dict[tuple[str, str], list[Decimal]] = {}
    for doc in docs:
        size = Decimal(str(doc["size_kb"])).quantize(Decimal("0.01"))
        moment = datetime.fromisoformat(doc["processed_at"].replace("Z", "+00:00")).astimezone(timezone.utc)
        bucket = ("<50KB" if size < 50 else "50-200KB" if size < 200 else "200-1000KB" if size < 1000
                  else ">=1000KB")
        for dimension, value in (("format", doc["format"].lower()), ("hour", f"{moment.hour:02d}"),
                                 ("day", moment.date().isoformat()), ("size_bucket", bucket),
                                 ("faces", str(doc["faces"]))):
            groups.setdefault((dimension, value), []).append(size)
    lines = []
    for (dimension, value), sizes in groups.items():
        total = sum(sizes)
        mean = (total / len(sizes)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        lines.append(f"{dimension}\t{value}\t{len(sizes)}\t{total:.2f}\t{min(sizes):.2f}\t{max(sizes):.2f}\t{mean:.2f}\n")
    return sorted(lines)


def golden_summary() -> str:
    return (GOLDEN / "part-00000").read_text(encoding="utf-8")


def run_mapper(lines) -> tuple[list[str], dict[str, int]]:
    out, err = io.StringIO(), io.StringIO()
    assert mapper.main(stdin=iter(lines), stdout=out, stderr=err) == 0
    counters = {}
    for line in err.getvalue().splitlines():
        prefix, _, rest = line.partition("reporter:counter:imgpipe,")
        assert prefix == "" and rest, f"stderr carries only counters, got {line!r}"
        name, value = rest.rsplit(",", 1)
        counters[name] = int(value)
    return out.getvalue().splitlines(keepends=True), counters


def run_reducer(lines, combiner: bool = False) -> list[str]:
    out, err = io.StringIO(), io.StringIO()
    assert reducer.main(["--combiner"] if combiner else [], stdin=iter(lines), stdout=out, stderr=err) == 0
    return out.getvalue().splitlines(keepends=True)


# Provenance of the golden files ---------------------------------------------------------------

def test_golden_input_is_the_export_of_the_golden_documents():
    assert (GOLDEN / "input.csv").read_text(encoding="utf-8") == make_golden_input()


def test_golden_summary_matches_an_independent_computation():
    assert golden_summary() == "".join(expected_summary(golden_documents()))


# The mapper -----------------------------------------------------------------------------------

def test_default_columns_are_the_document_fields_in_order():
    assert mapper.DEFAULT_COLUMNS == tuple(FIELDS)


def test_map_record_gives_one_pair_per_dimension():
    doc = dict(golden_documents()[20], format="png", size_kb=123.4, faces=2,
               processed_at="2026-11-25T16:40:31.123Z")
    assert mapper.map_record(to_row(doc)) == [
        ("format", "png", 12340), ("hour", "16", 12340), ("day", "2026-11-25", 12340),
        ("size_bucket", "50-200KB", 12340), ("faces", "2", 12340)]


@pytest.mark.parametrize("size_kb, bucket", [(0, "<50KB"), (49.99, "<50KB"), (50, "50-200KB"),
                                             (199.99, "50-200KB"), (200, "200-1000KB"),
                                             (999.99, "200-1000KB"), (1000, ">=1000KB"), (123456.78, ">=1000KB")])
def test_size_buckets_have_closed_lower_bounds(size_kb, bucket):
    doc = dict(golden_documents()[20], size_kb=size_kb)
    assert dict((d, v) for d, v, _ in mapper.map_record(to_row(doc)))["size_bucket"] == bucket


@pytest.mark.parametrize("text, day, hour", [
    ("2026-11-25T16:40:31.123Z", "2026-11-25", "16"),
    ("2026-11-25T16:40:31Z", "2026-11-25", "16"),
    ("2026-11-25T16:40:31.123456+00:00", "2026-11-25", "16"),
    ("2026-11-26T01:10:00+02:00", "2026-11-25", "23"),
    ("2026-11-25T16:40:31", "2026-11-25", "16"),  # no zone: taken as UTC
    ("2026-12-31T23:59:59.999Z", "2026-12-31", "23"),
    ("2028-02-29T00:00:00Z", "2028-02-29", "00"),
    ("2026-11-25T00:10:00-08:00", "2026-11-25", "08"),
    ("2026-11-25T16:40:31.5+0530", "2026-11-25", "11"),
    ("2026-12-31T23:30:00-01:00", "2027-01-01", "00"),
])
def test_processing_time_is_bucketed_in_utc(text, day, hour):
    assert mapper.day_and_hour(text) == (day, hour)


@pytest.mark.parametrize("text", ["", "yesterday", "2026-13-01T00:00:00Z", "2026-11-25T24:00:00Z", "1764088831",
                                  "2026-02-30T10:00:00Z", "2026-11-31T10:00:00Z"])
def test_bad_processing_times_are_malformed(text):
    with pytest.raises(mapper.MalformedRow):
        mapper.day_and_hour(text)


def test_columns_are_found_by_header_name_in_any_order():
    docs = golden_documents()[10:14]
    order = list(reversed(FIELDS))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=order, lineterminator="\n")
    writer.writeheader()
    for doc in docs:
        writer.writerow(dict(zip(FIELDS, to_row(doc))))
    by_name, counters = run_mapper(buf.getvalue().splitlines(keepends=True))
    in_order, _ = run_mapper(_export_lines(docs))
    assert counters == {"header_rows": 1, "rows": 4}
    assert by_name == in_order


def _export_lines(docs) -> list[str]:
    buf = io.StringIO()
    write_csv(docs, buf)
    return buf.getvalue().splitlines(keepends=True)


def test_a_split_without_header_is_mapped_by_the_default_order():
    lines = _export_lines(golden_documents())
    with_header, counters = run_mapper(lines)
    without, counters_without = run_mapper(lines[1:])
    assert with_header == without
    assert counters["header_rows"] == 1 and "header_rows" not in counters_without
    assert counters["rows"] == counters_without["rows"] == 40


def test_malformed_rows_are_counted_and_left_out_of_the_data():
    good = _export_lines(golden_documents())
    bad = malformed_lines()
    # Each bad line is followed by a good one: a stray quote must not swallow it.
    mixed = [good[0]] + [line for pair in zip(bad, good[1:]) for line in pair] + good[1 + len(bad):]
    out, counters = run_mapper(mixed)
    clean_out, _ = run_mapper(good)
    assert out == clean_out
    assert counters["rows"] == 40
    assert counters["malformed_rows"] == len(bad)
    assert {k[len("malformed_"):]: v for k, v in counters.items()
            if k.startswith("malformed_") and k != "malformed_rows"} == MALFORMED_REASONS


def test_awkward_keys_survive_export_and_mapping():
    docs = sample_documents(len(CSV_BREAKING_KEYS) + 5, seed=5)
    lines = _export_lines(docs)
    assert len(lines) == len(docs) + 1, "no row may span two lines"
    keys = [row[list(FIELDS).index("key")] for row in csv.reader(lines[1:])]
    assert keys == [d["key"].replace("\r", "\\r").replace("\n", "\\n") for d in docs]
    for key in CSV_BREAKING_KEYS:
        if "\n" not in key and "\r" not in key:
            assert key in keys
    _, counters = run_mapper(lines)
    assert counters == {"header_rows": 1, "rows": len(docs)}


def test_group_values_cannot_break_the_output_framing():
    fields = to_row(golden_documents()[20])
    fields[list(FIELDS).index("format")] = "jp\teg\nx\r\x00"
    assert mapper.map_record(fields)[0][:2] == ("format", "jp eg x")
    fields[list(FIELDS).index("format")] = "  "
    assert mapper.map_record(fields)[0][:2] == ("format", "unknown")


def test_the_mapper_flushes_partials_when_it_holds_too_many_groups(monkeypatch):
    monkeypatch.setattr(mapper, "MAX_HELD_GROUPS", 3)
    lines = _export_lines(golden_documents())
    out, _ = run_mapper(lines)
    assert len(out) > len(set(line.split("\t")[0] + line.split("\t")[1] for line in out))
    assert run_reducer(sorted(out)) == golden_summary().splitlines(keepends=True)


# The reducer ----------------------------------------------------------------------------------

def test_reduce_group_merges_partials():
    assert reducer.reduce_group(("format", "png"), [(2, 300, 100, 200), (1, 5, 5, 5), (3, 900, 250, 400)]) == \
        (("format", "png"), (6, 1205, 5, 400))


@pytest.mark.parametrize("total, count, mean", [(1000, 3, "3.33"), (1001, 2, "5.01"), (5, 2, "0.03"),
                                                (7, 2, "0.04"), (0, 4, "0.00"), (123456789, 1, "1234567.89")])
def test_mean_is_rounded_half_up_with_integers(total, count, mean):
    assert reducer.mean_kib(total, count) == mean


def test_final_and_combiner_outputs():
    lines = ["format\tpng\t2\t3.00\t1.00\t2.00\n", "format\tpng\t1\t0.50\t0.50\t0.50\n"]
    assert run_reducer(lines) == ["format\tpng\t3\t3.50\t0.50\t2.00\t1.17\n"]
    assert run_reducer(lines, combiner=True) == ["format\tpng\t3\t3.50\t0.50\t2.00\n"]


def test_the_reducer_accepts_its_own_final_output():
    final = golden_summary().splitlines(keepends=True)
    assert run_reducer(final) == final
    doubled = []
    for line in final:
        dimension, value, count, total, low, high, mean = line.rstrip("\n").split("\t")
        total = reducer.kib(2 * reducer.hundredths(total))
        doubled.append("\t".join([dimension, value, str(2 * int(count)), total, low, high, mean]) + "\n")
    assert run_reducer(sorted(final + final)) == doubled


def test_malformed_partials_are_counted_not_output():
    out, err = io.StringIO(), io.StringIO()
    lines = ["format\tpng\t1\t1.00\t1.00\t1.00\n", "garbage\n", "format\tpng\tx\t1\t1\t1\n",
             "format\tpng\t1\t1.001\t1\t1\n", "format\tpng\t1\t2.00\t2.00\t2.00\n"]
    assert reducer.main([], stdin=iter(lines), stdout=out, stderr=err) == 0
    assert out.getvalue() == "format\tpng\t2\t3.00\t1.00\t2.00\t1.50\n"
    assert err.getvalue() == "reporter:counter:imgpipe,reducer_malformed_lines,3\n"


def test_the_reducer_rejects_unknown_arguments():
    err = io.StringIO()
    assert reducer.main(["--final"], stdin=iter([]), stdout=io.StringIO(), stderr=err) == 2
    assert "usage" in err.getvalue()


# Order, splits and combiners -------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(8))
def test_result_does_not_depend_on_order_splits_or_combining(seed):
    rng = random.Random(seed)
    lines = (GOLDEN / "input.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    rng.shuffle(rows)
    cuts = sorted(rng.sample(range(1, len(rows)), rng.randint(0, 7)))
    chunks = [rows[a:b] for a, b in zip([0] + cuts, cuts + [len(rows)])]
    chunks[0] = [header] + chunks[0]  # only the first split of a file has the header
    partials = []
    malformed = 0
    for chunk in chunks:
        out, counters = run_mapper(chunk)
        malformed += counters.get("malformed_rows", 0)
        # Hadoop may run the combiner on a map's output zero, one or more times.
        for _ in range(rng.randint(0, 2)):
            out = run_reducer(sorted(out), combiner=True)
        partials.extend(out)
    rng.shuffle(partials)
    # ... and reduce tasks may see partials in any grouping before the final merge.
    half = len(partials) // 2
    partials = run_reducer(sorted(partials[:half]), combiner=True) + partials[half:]
    assert run_reducer(sorted(partials)) == golden_summary().splitlines(keepends=True)
    assert malformed == len(malformed_lines())


# The scripts as EMR runs them -------------------------------------------------------------------

def test_scripts_run_as_a_shell_pipe_under_the_oldest_python_on_emr():
    """`cat | mapper | sort | reducer` with the scripts as executables (their shebang), and
    again with Python 3.7 (EMR 6.x's python3)."""
    interpreters = [None, require_python37()]
    for python in interpreters:
        prefix = f"{python} " if python else ""
        result = subprocess.run(
            f"cat {GOLDEN / 'input.csv'} | {prefix}{SCRIPTS[0]} | LC_ALL=C sort | {prefix}{SCRIPTS[1]}",
            shell=True, capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
        assert result.returncode == 0, result.stderr
        assert result.stdout == golden_summary()
        assert "reporter:counter:imgpipe,malformed_rows,6" in result.stderr.splitlines()
