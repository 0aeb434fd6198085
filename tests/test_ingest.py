"""The ingest path end to end on the real stack: S3 -> producer -> Kafka -> consumer -> S3 + MeiliSearch."""
from __future__ import annotations

import json
import unicodedata

import cv2
import numpy as np
import pytest

from imgpipe import kafka, meili, s3
from imgpipe.document import document_id
from tests.helpers import admin, all_documents, encode, read_topic, run_script, gradient_pattern, upload

pytestmark = pytest.mark.integration

CONSUME = ["--max-idle-seconds", "4", "--status-interval", "2", "--no-progress"]


def good_images() -> dict[str, tuple[bytes, tuple[int, int, str]]]:
    """name -> (bytes, (width, height, format))."""
    images = {}
    sizes = [(64, 48), (640, 480), (300, 900), (1, 1), (8000, 10), (10, 500)]
    formats = [(".jpg", "jpeg"), (".png", "png"), (".webp", "webp")]
    for i, (w, h) in enumerate(sizes):
        ext, fmt = formats[i % len(formats)]
        images[f"img{i}{ext}"] = (encode(gradient_pattern(w, h, seed=i), ext), (w, h, fmt))
    return images


def test_n_images_become_exactly_n_documents_and_derived_images(settings):
    images = good_images()
    keys = upload(settings, {name: data for name, (data, _) in images.items()})

    produced = run_script("producer/image_producer.py", ["--no-progress"], settings)
    assert produced.returncode == 0, produced.stderr
    assert f"sent {len(images)}, failed 0" in produced.stderr

    consumed = run_script("consumer/image_consumer.py", CONSUME, settings)
    assert consumed.returncode == 0, consumed.stderr
    assert f"indexed {len(images)}, dead-lettered 0" in consumed.stderr

    docs = {d["key"]: d for d in all_documents(settings)}
    assert sorted(docs) == sorted(keys)
    client = s3.client(settings)
    for name, (_, (w, h, fmt)) in images.items():
        doc = docs[settings.s3_raw_prefix + name]
        assert (doc["width"], doc["height"], doc["format"]) == (w, h, fmt), name
        assert doc["id"] == document_id(settings.s3_bucket, doc["key"])
        thumb = client.get_object(Bucket=settings.s3_bucket, Key=doc["thumbnail_key"])["Body"].read()
        decoded = cv2.imdecode(np.frombuffer(thumb, np.uint8), cv2.IMREAD_UNCHANGED)
        assert decoded is not None and max(decoded.shape[:2]) == min(max(w, h), settings.thumbnail_size)
        assert min(decoded.shape[:2]) >= 1
        gray = client.get_object(Bucket=settings.s3_bucket, Key=doc["grayscale_key"])["Body"].read()
        assert cv2.imdecode(np.frombuffer(gray, np.uint8), cv2.IMREAD_UNCHANGED).ndim == 2
        assert doc["thumbnail_key"].startswith(settings.s3_processed_prefix)

    # The same messages again (a new group reads the topic from the start): still N documents.
    again = run_script("consumer/image_consumer.py", CONSUME + ["--group", settings.kafka_consumer_group + "-again"],
                       settings)
    assert again.returncode == 0, again.stderr
    assert f"indexed {len(images)}" in again.stderr
    redelivered = all_documents(settings)
    assert len(redelivered) == len(images)
    assert len({d["id"] for d in redelivered}) == len(images)


def test_broken_files_are_dead_lettered_with_their_reason_and_good_ones_indexed(settings):
    good = {"fine.jpg": encode(gradient_pattern(200, 100), ".jpg")}
    broken = {
        "empty.jpg": (b"", "empty"),
        "text.jpg": (b"hello, I am not an image at all\n" * 4, "not an image"),
        "truncated.png": (encode(gradient_pattern(300, 300), ".png")[:400], "truncated"),
    }
    upload(settings, {**good, **{k: v for k, (v, _) in broken.items()}})
    assert run_script("producer/image_producer.py", ["--no-progress"], settings).returncode == 0
    consumed = run_script("consumer/image_consumer.py", CONSUME, settings)
    assert consumed.returncode == 0, consumed.stderr

    assert [d["file_name"] for d in all_documents(settings)] == ["fine.jpg"]
    dead = read_topic(settings, settings.kafka_dead_letter_topic, expected=len(broken))
    assert len(dead) == len(broken)
    by_key = {}
    for msg in dead:
        headers = {k: v.decode() for k, v in msg.headers()}
        event = json.loads(msg.value())
        by_key[event["key"].rsplit("/", 1)[-1]] = headers
    assert sorted(by_key) == sorted(broken)
    for name, (_, reason) in broken.items():
        headers = by_key[name]
        assert reason in headers["reason"].lower(), (name, headers["reason"])
        assert headers["error_class"] == "MessageError"
        assert headers["stage"] in ("guard", "decode")
        assert headers["source_topic"] == settings.kafka_topic
        assert int(headers["attempts"]) >= 1 and headers["failed_at"].endswith("Z")


def test_malformed_messages_and_foreign_buckets_are_dead_lettered(settings):

    good_key = upload(settings, {"ok.png": encode(gradient_pattern(50, 40), ".png")})[0]
    valid = {"schema_version": 1, "bucket": settings.s3_bucket, "key": good_key, "size": 1, "etag": "x",
             "last_modified": "2026-01-01T00:00:00.000Z", "event_time": "2026-01-01T00:00:00.000Z"}
    bad_values = {
        "not-json": b"{{{",
        "missing": json.dumps({"schema_version": 1, "bucket": settings.s3_bucket}).encode(),
        "wrong-type": json.dumps({**valid, "size": "big"}).encode(),
        "junk": b"\x00" * (1024 * 1024),
        "foreign": json.dumps({**valid, "bucket": "someone-elses-bucket"}).encode(),
        "missing-object": json.dumps({**valid, "key": settings.s3_raw_prefix + "nope.jpg"}).encode(),
    }
    producer = kafka.producer(settings, **{"message.max.bytes": 2_000_000})
    for name, value in bad_values.items():
        producer.produce(settings.kafka_topic, key=name.encode(), value=value)
    producer.produce(settings.kafka_topic, key=b"good", value=json.dumps(valid).encode())
    assert producer.flush(20) == 0

    consumed = run_script("consumer/image_consumer.py", CONSUME, settings)
    assert consumed.returncode == 0, consumed.stderr
    assert [d["key"] for d in all_documents(settings)] == [good_key]
    dead = {m.key().decode(): {k: v.decode() for k, v in m.headers()}
            for m in read_topic(settings, settings.kafka_dead_letter_topic, expected=len(bad_values))}
    assert sorted(dead) == sorted(bad_values)
    assert "not JSON" in dead["not-json"]["reason"]
    assert "missing field" in dead["missing"]["reason"]
    assert "size must be int" in dead["wrong-type"]["reason"]
    assert "bytes, more than" in dead["junk"]["reason"]
    assert "not in the allowed buckets" in dead["foreign"]["reason"]
    assert "does not exist" in dead["missing-object"]["reason"] and dead["missing-object"]["stage"] == "fetch"


def test_awkward_keys_are_indexed_under_their_exact_key(settings):
    names = ["a cat.jpg", "1+1=2.png", "100%.jpg", "#tag;x&y=z.jpg", unicodedata.normalize("NFC", "café.png"),
             unicodedata.normalize("NFD", "café.png"), "日本/写真.jpg", 'quote"s,comma.jpg']
    data = encode(gradient_pattern(40, 30), ".png")
    keys = upload(settings, {name: data for name in names})
    assert run_script("producer/image_producer.py", ["--no-progress"], settings).returncode == 0
    assert run_script("consumer/image_consumer.py", CONSUME, settings).returncode == 0
    docs = all_documents(settings)
    assert sorted(d["key"].encode("utf-8") for d in docs) == sorted(k.encode("utf-8") for k in keys)
    for doc in docs:
        assert doc["thumbnail_key"].startswith(settings.s3_processed_prefix + "thumbnails/")


def test_a_key_with_dot_segments_is_indexed_as_the_bucket_lists_it(settings):
    """The promise: a document's key is the key the S3 server lists, byte for byte. What a
    `..` segment means is the server's business: AWS S3 keeps `x/../escape.jpg` as it is, while
    versitygw's posix backend stores a path and resolves it to `escape.jpg`. Either way the
    pipeline indexes exactly the listed key, once, and derived keys have no dot segments."""
    upload(settings, {"x/../escape.jpg": encode(gradient_pattern(40, 30), ".png")})
    listed = [o["Key"] for o in s3.list_objects(s3.client(settings), settings.s3_bucket, settings.s3_raw_prefix)]
    assert listed in ([settings.s3_raw_prefix + "x/../escape.jpg"], [settings.s3_raw_prefix + "escape.jpg"])
    assert run_script("producer/image_producer.py", ["--no-progress"], settings).returncode == 0
    assert run_script("consumer/image_consumer.py", CONSUME, settings).returncode == 0
    docs = all_documents(settings)
    assert [d["key"] for d in docs] == listed
    for name in ("thumbnail_key", "grayscale_key"):
        segments = docs[0][name][len(settings.s3_processed_prefix):].split("/")
        assert "." not in segments and ".." not in segments


def test_a_file_name_of_255_bytes_gets_derived_images(settings):
    name = "日" * 85  # 255 bytes of UTF-8, no extension: the longest segment a file system allows
    keys = upload(settings, {name: encode(gradient_pattern(40, 30), ".png")})
    assert run_script("producer/image_producer.py", ["--no-progress"], settings).returncode == 0
    consumed = run_script("consumer/image_consumer.py", CONSUME, settings)
    assert "indexed 1, dead-lettered 0" in consumed.stderr, consumed.stderr
    [doc] = all_documents(settings)
    assert doc["key"] == keys[0]
    client = s3.client(settings)
    for name in ("thumbnail_key", "grayscale_key"):
        assert client.head_object(Bucket=settings.s3_bucket, Key=doc[name])["ContentLength"] > 0


def test_filters_and_sorting_work_on_the_index(settings):
    upload(settings, {"a.jpg": encode(gradient_pattern(100, 100, 1), ".jpg"),
                      "b.png": encode(gradient_pattern(120, 80, 2), ".png")})
    assert run_script("producer/image_producer.py", ["--no-progress"], settings).returncode == 0
    assert run_script("consumer/image_consumer.py", CONSUME, settings).returncode == 0

    index = meili.search_client(settings).index(settings.meili_index)
    hits = index.search("", {"filter": 'format = "jpeg" AND width = 100', "sort": ["timestamp:desc"]})["hits"]
    assert [h["file_name"] for h in hits] == ["a.jpg"]
    assert "faces" not in hits[0]  # the enrichment stage's field: the core never writes it


def test_producer_sends_only_the_given_keys_and_reports_missing_ones(settings):
    keys = upload(settings, {"one.png": b"1", "two.png": b"2"})
    result = run_script("producer/image_producer.py", ["--no-progress", "--key", keys[1],
                                                        "--key", settings.s3_raw_prefix + "absent.png"], settings)
    assert result.returncode == 1
    assert "sent 1, failed 0" in result.stderr and "absent.png does not exist" in result.stderr
    messages = read_topic(settings, settings.kafka_topic, expected=1)
    assert [json.loads(m.value())["key"] for m in messages] == [keys[1]]
    assert messages[0].key().decode() == keys[1]


def test_watch_mode_sends_new_objects_and_resends_nothing_after_a_restart(settings, tmp_path):
    import signal
    import subprocess
    import sys

    from imgpipe.settings import REPO_ROOT
    from tests.helpers import script_env, wait_for

    state = tmp_path / "state.json"
    upload(settings, {"w1.png": b"1", "w2.png": b"2"})
    args = [sys.executable, str(REPO_ROOT / "producer/image_producer.py"), "--no-progress", "--watch", "0.5",
            "--state-file", str(state)]

    def watch_until(condition) -> str:
        watcher = subprocess.Popen(args, env=script_env(settings), cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(condition, 60, "the watcher")
        finally:
            watcher.send_signal(signal.SIGTERM)
            _, err = watcher.communicate(timeout=30)
        assert watcher.returncode == 0, err
        return err

    watch_until(lambda: state.is_file() and len(json.loads(state.read_text())) == 2)
    upload(settings, {"w3.png": b"3"})
    watch_until(lambda: len(json.loads(state.read_text())) == 3)
    keys = [json.loads(m.value())["key"].rsplit("/", 1)[-1] for m in read_topic(settings, settings.kafka_topic, 3)]
    assert sorted(keys) == ["w1.png", "w2.png", "w3.png"]

    # A deleted object becomes a delete event at the next full pass, and leaves the state file.
    s3.client(settings).delete_object(Bucket=settings.s3_bucket, Key=settings.s3_raw_prefix + "w1.png")
    watch_until(lambda: len(json.loads(state.read_text())) == 2)
    assert sorted(k.rsplit("/", 1)[-1] for k in json.loads(state.read_text())) == ["w2.png", "w3.png"]
    events = [json.loads(m.value()) for m in read_topic(settings, settings.kafka_topic, 4)]
    assert len(events) == 4 and [e["action"] for e in events].count("delete") == 1
    [deleted] = [e for e in events if e["action"] == "delete"]
    assert (deleted["bucket"], deleted["key"], deleted["sequencer"]) == (
        settings.s3_bucket, settings.s3_raw_prefix + "w1.png", None)


def test_producer_fails_fast_with_one_line_when_kafka_is_unreachable_or_the_topic_missing(settings):
    upload(settings, {"a.png": b"x"})
    unreachable = run_script("producer/image_producer.py", ["--no-progress"],
                             settings.with_overrides(kafka_bootstrap_servers="127.0.0.1:9"), timeout=60)
    assert unreachable.returncode == 1
    assert "error: kafka: cannot reach 127.0.0.1:9" in unreachable.stderr and "Traceback" not in unreachable.stderr
    missing = run_script("producer/image_producer.py", ["--no-progress", "--topic", f"{settings.kafka_topic}-nope"],
                         settings, timeout=60)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_a_core_reindex_of_a_changed_object_drops_what_was_enriched_from_the_older_version(settings):
    # The enricher adds `faces` to the core's document of one version (ETag). When the object
    # changes, the core document of the new version replaces the old one whole: an older version's
    # faces must never stand on a newer image (the announcement has the enricher add them again).
    keys = upload(settings, {"enriched.jpg": encode(gradient_pattern(90, 60, 3), ".jpg")})
    assert run_script("producer/image_producer.py", ["--no-progress"], settings).returncode == 0
    assert run_script("consumer/image_consumer.py", CONSUME, settings).returncode == 0
    master = admin(settings)
    index = meili.client(master).index(settings.meili_index)
    doc_id = document_id(settings.s3_bucket, keys[0])
    task = index.update_documents([{"id": doc_id, "faces": 3}], primary_key="id")
    meili.wait_for_task(meili.client(master), master, task.task_uid, "enriching", settings.meili_index)
    assert dict(index.get_document(doc_id))["faces"] == 3
    upload(settings, {"enriched.jpg": encode(gradient_pattern(120, 80, 3), ".jpg")})
    assert run_script("producer/image_producer.py", ["--no-progress"], settings).returncode == 0
    assert run_script("consumer/image_consumer.py", CONSUME, settings).returncode == 0
    document = dict(index.get_document(doc_id))
    assert (document["width"], document["height"]) == (120, 80)
    assert "faces" not in document
