"""The enricher end to end against the real stack: the consumer indexes and announces, the
enricher adds faces and text; a late enrichment never re-creates a deleted document nor lands
on a newer version; a broken image is a dead letter with a reason; the enricher exits when idle."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fixtures.images import encode
from imgpipe import kafka, meili, s3
from imgpipe.events import ImageEvent, utc_now_iso
from imgpipe.indexed import IndexedImage
from tests.helpers import all_documents, read_topic, run_script, upload

pytestmark = pytest.mark.integration

CONSUME = ["--max-idle-seconds", "4", "--no-progress", "--workers", "1"]
ENRICH = ["--max-idle-seconds", "4", "--no-progress", "--workers", "1"]


@pytest.fixture
def esettings(settings):
    """The settings fixture's: its own topics (the indexed, backfill and enricher dead-letter ones
    too), group, index and prefixes."""
    kafka.ensure_topics(settings, [settings.kafka_indexed_topic])
    return settings


def face_photo() -> bytes:
    import skimage.data

    return encode(skimage.data.astronaut()[:, :, ::-1], ".jpg")


def text_image(lines=("INVOICE 4711", "ZEBRAFISH DELIVERY")) -> bytes:
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (900, 300), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", 44)
    for row, line in enumerate(lines):
        draw.text((40, 40 + row * 110), line, fill="black", font=font)
    return encode(np.asarray(image)[:, :, ::-1].copy(), ".png")


def send(settings, keys) -> None:
    producer = kafka.producer(settings)
    client = s3.client(settings)
    for key in keys:
        head = s3.head(client, settings.s3_bucket, key)
        event = ImageEvent(settings.s3_bucket, key, head["Size"], head["ETag"].strip('"'), utc_now_iso(), utc_now_iso())
        producer.produce(settings.kafka_topic, key=key.encode(), value=event.to_json())
    assert producer.flush(30) == 0


def announce(settings, announcements) -> None:
    producer = kafka.producer(settings)
    for a in announcements:
        producer.produce(settings.kafka_indexed_topic, key=a.message_key, value=a.to_json())
    assert producer.flush(30) == 0


def consume(settings) -> dict:
    result = run_script("consumer/image_consumer.py", [*CONSUME, "--summary-json", "/dev/stdout"], settings,
                        timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def enrich(settings, *extra) -> dict:
    result = run_script("enricher/image_enricher.py", [*ENRICH, *extra, "--summary-json", "/dev/stdout"], settings,
                        timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def by_key(settings) -> dict:
    return {d["key"]: d for d in all_documents(settings)}


def test_faces_and_text_are_added_to_the_indexed_documents_and_text_is_searchable(esettings):
    keys = upload(esettings, {"astronaut.jpg": face_photo(), "invoice.png": text_image()})
    send(esettings, keys)
    assert consume(esettings)["indexed"] == 2
    assert len(read_topic(esettings, esettings.kafka_indexed_topic, 2)) == 2  # the consumer announced both

    summary = enrich(esettings)
    assert (summary["enriched"], summary["dead_lettered"]) == (2, 0)
    docs = by_key(esettings)
    face = docs[keys[0]]
    assert face["faces"] == 1 and len(face["face_boxes"]) == 1
    box = face["face_boxes"][0]
    # The astronaut's face: about x 0.33-0.52, y 0.10-0.35 of the 512 px photo.
    assert 0.28 < box["x"] < 0.42 and 0.05 < box["y"] < 0.18 and 0.1 < box["w"] < 0.3 and box["confidence"] > 0.5
    assert face["text_chars"] == 0 and face["enrichment_version"] == 1 and face["enriched_etag"] == face["etag"]
    invoice = docs[keys[1]]
    assert invoice["text"].split("\n") == ["INVOICE 4711", "ZEBRAFISH DELIVERY"]
    assert invoice["text_chars"] == len("INVOICE4711ZEBRAFISHDELIVERY")
    assert [line["text"] for line in invoice["text_lines"]] == ["INVOICE 4711", "ZEBRAFISH DELIVERY"]
    assert all(0 <= v <= 1 for line in invoice["text_lines"] for v in line["box"])
    assert invoice["faces"] == 0 and invoice["face_boxes"] == []

    hits = meili.search(esettings, esettings.meili_index, "zebrafish",
                        {"attributesToHighlight": ["text"]})["hits"]
    assert [hit["key"] for hit in hits] == [keys[1]]
    assert "<em>ZEBRAFISH</em>" in hits[0]["_formatted"]["text"]
    assert [d["key"] for d in meili.search(esettings, esettings.meili_index, "", {"filter": "faces > 0"})["hits"]] \
        == [keys[0]]
    shown = run_script("visualize/search.py", ["zebrafish"], esettings, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "[ZEBRAFISH] DELIVERY" in shown.stdout and "invoice.png" in shown.stdout
    assert "astronaut.jpg" not in shown.stdout and "search: 1 of about 1 hits" in shown.stdout


def test_a_late_enrichment_never_recreates_a_deleted_document(esettings):
    keys = upload(esettings, {"invoice.png": text_image()})
    send(esettings, keys)
    assert consume(esettings)["indexed"] == 1
    doc = by_key(esettings)[keys[0]]
    # The document goes (a delete event indexed) before the enricher gets to its announcement.
    client = meili.client(esettings, key=esettings.meili_master_key)
    meili.wait_for_task(client, esettings, client.index(esettings.meili_index).delete_document(doc["id"]).task_uid,
                        "deleting")
    summary = enrich(esettings)
    assert summary["enriched"] == 0 and summary["skipped"] == {"missing": 1}, json.dumps(summary)
    assert all_documents(esettings) == []


def test_an_older_versions_enrichment_never_lands_on_a_newer_version(esettings):
    keys = upload(esettings, {"invoice.png": text_image()})
    send(esettings, keys)
    assert consume(esettings)["indexed"] == 1
    doc = by_key(esettings)[keys[0]]
    # An announcement of an older version of the same object (another etag), enriched late.
    older = IndexedImage(id=doc["id"], bucket=doc["bucket"], key=doc["key"], etag="0" * 32,
                         event_time=utc_now_iso(), thumbnail_key=doc["thumbnail_key"], width=900, height=300)
    kafka.delete_topics(esettings, [esettings.kafka_indexed_topic], timeout=15)
    kafka.ensure_topics(esettings, [esettings.kafka_indexed_topic])
    announce(esettings, [older])
    summary = enrich(esettings)
    assert summary["enriched"] == 0 and summary["skipped"] == {"stale": 1}
    after = by_key(esettings)[keys[0]]
    assert "text" not in after and "face_boxes" not in after and after["text_chars"] is None


def test_the_writer_checks_the_document_it_adds_to(esettings):
    """enricher/writer.py against MeiliSearch alone: missing, stale and current documents."""
    import threading

    from enricher.writer import Enrichment, EnrichmentWriter

    client = meili.client(esettings, key=esettings.meili_master_key)
    task = client.index(esettings.meili_index).add_documents([{"id": "current", "etag": "e1"},
                                                              {"id": "newer", "etag": "e2"}])
    meili.wait_for_task(client, esettings, task.task_uid, "adding")
    writer = EnrichmentWriter(esettings, threading.Event(), {"faces_version": 1}, 1)
    outcome = writer.write([Enrichment("current", "e1", {"faces": 2, "faces_version": 1}),
                            Enrichment("newer", "e1", {"faces": 3, "faces_version": 1}),
                            Enrichment("gone", "e1", {"faces": 4, "faces_version": 1})])
    assert (outcome.applied, outcome.stale, outcome.missing) == (["current"], ["newer"], ["gone"])
    docs = {d["id"]: d for d in all_documents(esettings)}
    assert sorted(docs) == ["current", "newer"]
    assert docs["current"] == {"id": "current", "etag": "e1", "faces": 2, "faces_version": 1,
                               "enrichment_version": 1, "enriched_etag": "e1"}
    assert docs["newer"] == {"id": "newer", "etag": "e2"}


def test_an_object_deleted_after_it_was_indexed_is_skipped_as_gone_not_dead_lettered(esettings):
    """Its upload's announcement read apart from its deletion's: nothing to enrich, nothing to redrive."""
    keys = upload(esettings, {"invoice.png": text_image()})
    send(esettings, keys)
    assert consume(esettings)["indexed"] == 1
    s3.delete_keys(s3.client(esettings), esettings.s3_bucket, keys)
    summary = enrich(esettings)
    assert (summary["enriched"], summary["dead_lettered"], summary["skipped"]) == (0, 0, {"gone": 1}), \
        json.dumps(summary)
    assert "text" not in by_key(esettings)[keys[0]]


def test_a_broken_image_is_a_dead_letter_with_a_reason_and_the_rest_is_enriched(esettings):
    keys = upload(esettings, {"invoice.png": text_image(), "broken.jpg": b"\xff\xd8\xff\xe0 not really a jpeg"})
    send(esettings, keys[:1])
    assert consume(esettings)["indexed"] == 1
    head = s3.head(s3.client(esettings), esettings.s3_bucket, keys[1])
    announce(esettings, [IndexedImage(id="broken", bucket=esettings.s3_bucket, key=keys[1],
                                      etag=head["ETag"].strip('"'), event_time=utc_now_iso())])
    summary = enrich(esettings)
    assert (summary["enriched"], summary["dead_lettered"]) == (1, 1)
    letters = read_topic(esettings, esettings.kafka_enricher_dead_letter_topic, 1)
    assert len(letters) == 1
    headers = {k: v.decode() for k, v in letters[0].headers()}
    assert headers["stage"] in ("guard", "decode") and headers["reason"]
    assert headers["source_topic"] == esettings.kafka_indexed_topic
    assert json.loads(letters[0].value())["key"] == keys[1]


def test_the_enricher_exits_when_idle_and_says_what_it_did(esettings):
    result = run_script("enricher/image_enricher.py", ["--max-idle-seconds", "2", "--no-progress", "--workers", "1"],
                        esettings, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "enricher: consumed 0, enriched 0" in result.stderr


def test_a_user_mistake_is_one_line_and_exit_2(esettings):
    result = run_script("enricher/image_enricher.py", ["--rate", "0", "--backfill"], esettings, timeout=60)
    assert result.returncode == 2 and result.stderr.strip() == \
        "error: --rate must be a positive number of announcements per second"


def test_the_enrichers_dead_letters_are_redriven_to_the_indexed_topic(esettings):
    keys = upload(esettings, {"broken.jpg": b"\xff\xd8\xff\xe0 not really a jpeg"})
    head = s3.head(s3.client(esettings), esettings.s3_bucket, keys[0])
    announce(esettings, [IndexedImage(id="broken", bucket=esettings.s3_bucket, key=keys[0],
                                      etag=head["ETag"].strip('"'), event_time=utc_now_iso())])
    assert enrich(esettings)["dead_lettered"] == 1
    result = run_script("consumer/redrive.py", ["--enricher"], esettings, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"1 of 1 matching dead letters (of 1) sent to {esettings.kafka_indexed_topic}" in result.stderr
    assert len(read_topic(esettings, esettings.kafka_indexed_topic, 2)) == 2


def test_the_backfill_announces_what_lacks_the_enrichment_and_the_enricher_works_through_it(esettings):
    keys = upload(esettings, {"astronaut.jpg": face_photo(), "invoice.png": text_image()})
    send(esettings, keys)
    assert consume(esettings)["indexed"] == 2
    group = ["--group", esettings.kafka_enricher_group]  # both runs in one group: the live lane is read once
    assert enrich(esettings, "--only", "faces", *group)["enriched"] == 2  # text is not there yet
    result = run_script("enricher/image_enricher.py", ["--backfill", "--rate", "50", "--no-progress"], esettings,
                        timeout=120)
    assert result.returncode == 0, result.stderr
    assert "announced 2 lacking enrichment_version 1" in result.stderr
    summary = enrich(esettings, "--only", "text", *group)
    assert summary["enriched"] == 2
    assert all(d["enrichment_version"] == 1 for d in all_documents(esettings))
    again = run_script("enricher/image_enricher.py", ["--backfill", "--no-progress"], esettings, timeout=120)
    assert "announced 0 lacking" in again.stderr
