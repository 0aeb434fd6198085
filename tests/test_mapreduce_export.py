"""export_csv.py against the real MeiliSearch and S3 of the local stack."""
from __future__ import annotations

import csv
import io
import uuid

import pytest

from imgpipe import meili, s3
from imgpipe.document import EXPORT_COLUMNS as FIELDS  # the CSV columns
from mapreduce import export_csv
from fixtures.documents import sample_documents
from fixtures.keys import CSV_BREAKING_KEYS
from tests.helpers import admin

pytestmark = pytest.mark.integration


def index_documents(settings, documents, batch=1000) -> None:
    client = meili.client(settings)
    index = client.index(settings.meili_index)
    for start in range(0, len(documents), batch):
        task = index.add_documents(documents[start:start + batch], primary_key="id")
        done = client.wait_for_task(task.task_uid, timeout_in_ms=60000, interval_in_ms=100)
        assert done.status == "succeeded", done.error


def read_rows(path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def test_cells_are_plain_text_with_line_ends_escaped():
    assert export_csv.cell(None) == ""
    assert export_csv.cell(True) == "true"
    assert export_csv.cell(12.5) == "12.5"
    assert export_csv.cell(3) == "3"
    assert export_csv.cell("a\r\nb\nc") == "a\\r\\nb\\nc"
    assert export_csv.cell(["x", 1]) == '["x", 1]'
    assert export_csv.cell('q"t,=&;\t日本') == 'q"t,=&;\t日本'


def test_write_csv_writes_a_header_and_one_line_per_document():
    docs = sample_documents(12, seed=3)
    buf = io.StringIO()
    assert export_csv.write_csv(docs, buf) == 12
    lines = buf.getvalue().split("\n")
    assert lines[0] == ",".join(FIELDS)
    assert lines[-1] == "" and len(lines) == 14  # header + 12 rows, each ended by one LF
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert [r["key"] for r in rows] == [export_csv.cell(d["key"]) for d in docs]
    assert [r["size_kb"] for r in rows] == [str(d["size_kb"]) for d in docs]


@pytest.mark.slow
def test_export_reads_every_page_of_a_large_index(settings, tmp_path):
    documents = sample_documents(2500, seed=21)
    index_documents(settings, documents)
    out = tmp_path / "image_metadata.csv"
    rows, total, key_used = export_csv.export(settings, out, show_progress=False)
    stats = meili.client(admin(settings)).index(settings.meili_index).get_stats()
    assert rows == total == stats.number_of_documents == 2500
    exported = read_rows(out)
    assert len(exported) == 2500
    assert {r["id"] for r in exported} == {d["id"] for d in documents}
    assert list(exported[0]) == list(FIELDS)
    # The readers' key may read documents (imgpipe/access.py): no other key is needed.
    assert key_used == "documents API (search key)"
    by_id = {r["id"]: r for r in exported}
    for doc in documents[:len(CSV_BREAKING_KEYS)]:
        assert by_id[doc["id"]]["key"] == export_csv.cell(doc["key"])
        assert by_id[doc["id"]]["processed_at"] == doc["processed_at"]
        assert int(by_id[doc["id"]]["timestamp"]) == doc["timestamp"]


def test_export_reads_with_the_search_key_when_it_may_read_documents(settings, tmp_path):
    documents = sample_documents(30, seed=4)
    index_documents(settings, documents)
    master = meili.client(settings, key=settings.meili_master_key)
    key = master.create_key({"name": f"test-reader-{uuid.uuid4().hex[:6]}", "actions": ["documents.get"],
                             "indexes": [settings.meili_index], "expiresAt": None})
    try:
        reader = settings.with_overrides(meili_search_key=key.key)
        rows, total, key_used = export_csv.export(reader, tmp_path / "out.csv", page_size=7)
    finally:
        master.delete_key(key.key)
    assert (rows, total, key_used) == (30, 30, "documents API (search key)")
    assert len(read_rows(tmp_path / "out.csv")) == 30


def test_cli_exports_and_uploads_to_s3(settings, tmp_path, monkeypatch, capsys):
    documents = sample_documents(15, seed=8)
    index_documents(settings, documents)
    out = tmp_path / "export" / "image_metadata.csv"
    s3_key = f"{settings.s3_raw_prefix.split('/')[0]}/data/image_metadata.csv"
    code = export_csv.main(["--out", str(out), "--index", settings.meili_index, "--upload", "--s3-key", s3_key])
    assert code == 0
    summary = capsys.readouterr().out
    assert "exported 15 documents" in summary and f"s3://{settings.s3_bucket}/{s3_key}" in summary
    body = s3.client(settings).get_object(Bucket=settings.s3_bucket, Key=s3_key)["Body"].read()
    assert body == out.read_bytes()
    assert len(read_rows(out)) == 15


def test_cli_names_a_missing_index_in_one_line(settings, tmp_path, capsys):
    code = export_csv.main(["--out", str(tmp_path / "x.csv"), "--index", f"test_missing_{uuid.uuid4().hex[:8]}"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: MeiliSearch has no index") and "\n" not in err
    assert not (tmp_path / "x.csv").exists()
