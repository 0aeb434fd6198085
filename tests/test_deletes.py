"""Deletes end to end: a delete event removes the document and the derived images, in order with
the upserts of the same object; reconcile repairs the index after events were missed."""
from __future__ import annotations

import json
import time

import pytest

from fixtures.images import encode, gradient_pattern
from imgpipe import kafka, s3
from imgpipe.events import ImageEvent, utc_now_iso
from tests.helpers import all_documents, run_script, upload

pytestmark = pytest.mark.integration

CONSUME = ["--max-idle-seconds", "4", "--no-progress", "--workers", "1"]


def images(*names):
    return {name: encode(gradient_pattern(160, 120, seed=i), ".jpg") for i, name in enumerate(names)}


def send(settings, events: list[ImageEvent]) -> None:
    producer = kafka.producer(settings)
    for event in events:
        producer.produce(settings.kafka_topic, key=event.key.encode(), value=event.to_json())
    assert producer.flush(30) == 0


def upsert(settings, key):
    head = s3.head(s3.client(settings), settings.s3_bucket, key)
    return ImageEvent(settings.s3_bucket, key, head["Size"], head["ETag"].strip('"'), utc_now_iso(), utc_now_iso())


def consume(settings) -> dict:
    result = run_script("consumer/image_consumer.py", [*CONSUME, "--summary-json", "/dev/stdout"], settings,
                        timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def exists(settings, key) -> bool:
    return s3.head(s3.client(settings), settings.s3_bucket, key) is not None


def test_a_delete_event_removes_the_document_and_its_derived_images(settings, tmp_path):
    keys = upload(settings, images("a.jpg", "b.jpg", "c.jpg"))
    send(settings, [upsert(settings, key) for key in keys])
    first = consume(settings)
    assert first["indexed"] == 3
    # The summary's moments, in the order they happen (bench's start-up figure reads them).
    assert first["first_message_monotonic"] < first["first_processed_monotonic"] < first["last_committed_monotonic"]
    gone = {d["key"]: d for d in all_documents(settings)}[keys[1]]
    assert exists(settings, gone["thumbnail_key"]) and exists(settings, gone["grayscale_key"])

    s3.client(settings).delete_object(Bucket=settings.s3_bucket, Key=keys[1])
    send(settings, [ImageEvent.deletion(settings.s3_bucket, keys[1], utc_now_iso())])
    summary = consume(settings)
    assert (summary["deleted"], summary["dead_lettered"]) == (1, 0)
    assert sorted(d["key"] for d in all_documents(settings)) == [keys[0], keys[2]]
    assert not exists(settings, gone["thumbnail_key"]) and not exists(settings, gone["grayscale_key"])

    # The export, MapReduce and visualize no longer count it.
    csv_path = tmp_path / "export.csv"
    exported = run_script("mapreduce/export_csv.py", ["--out", str(csv_path)], settings)
    assert exported.returncode == 0 and "exported 2 documents" in exported.stdout
    job = run_script("mapreduce/run_job.py", ["--runner", "pipe", "--input", str(csv_path),
                                             "--output", str(tmp_path / "mr")], settings)
    assert job.returncode == 0, job.stderr
    formats = [line.split("\t") for line in (tmp_path / "mr" / "summary.tsv").read_text().splitlines()
               if line.startswith("format\t")]
    assert sum(int(fields[2]) for fields in formats) == 2
    shown = run_script("visualize/report.py", ["--previews", "0", "--out", str(tmp_path / "charts"),
                                                  "--mapreduce-dir", str(tmp_path / "none")], settings)
    assert shown.returncode == 0 and "visualize: 2 images" in shown.stdout


def test_events_of_one_object_in_one_batch_end_with_the_last(settings):
    keys = upload(settings, images("come-and-go.jpg", "back-again.jpg"))
    come, back = keys
    # come-and-go: uploaded, announced, deleted before the consumer ran: the delete wins, and the
    # upsert is not dead-lettered for an object that is gone.
    s3.client(settings).delete_object(Bucket=settings.s3_bucket, Key=come)
    send(settings, [ImageEvent(settings.s3_bucket, come, 10, "e", utc_now_iso(), utc_now_iso()),
                    ImageEvent.deletion(settings.s3_bucket, come, utc_now_iso()),
                    ImageEvent.deletion(settings.s3_bucket, back, utc_now_iso()),
                    upsert(settings, back)])
    summary = consume(settings)
    assert [d["key"] for d in all_documents(settings)] == [back]
    assert (summary["dead_lettered"], summary["superseded"], summary["indexed"], summary["deleted"]) == (0, 2, 1, 1)


def test_reconcile_announces_objects_without_documents_and_deletes_documents_without_objects(settings):
    keys = upload(settings, images("kept.jpg", "vanished.jpg", "never-announced.jpg"))
    kept, vanished, unannounced = keys
    send(settings, [upsert(settings, kept), upsert(settings, vanished)])
    consume(settings)
    s3.client(settings).delete_object(Bucket=settings.s3_bucket, Key=vanished)  # no event: missed

    dry = run_script("producer/reconcile.py", ["--dry-run"], settings)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [f"upsert\t{unannounced}", f"delete\t{vanished}"]
    assert "1 without a document, 0 changed, 1 documents whose object is gone" in dry.stderr
    before = sum(kafka.end_offsets(settings, settings.kafka_topic).values())
    assert sum(kafka.end_offsets(settings, settings.kafka_topic).values()) == before  # a dry run sends nothing

    repaired = run_script("producer/reconcile.py", [], settings)
    assert repaired.returncode == 0 and "sent 2 events (1 upserts, 1 deletes)" in repaired.stderr
    consume(settings)
    assert sorted(d["key"] for d in all_documents(settings)) == sorted([kept, unannounced])
    time.sleep(0.5)
    again = run_script("producer/reconcile.py", [], settings)
    assert again.returncode == 0 and "nothing to repair" in again.stderr
