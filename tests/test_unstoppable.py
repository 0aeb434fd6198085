"""No input can stop the stream: every message ends indexed, dead-lettered with a reason, or
retried, within the per-image time and memory budgets. Real Kafka, MeiliSearch and S3; the
consumer runs as a user runs it, and every check counts documents, dead letters and bytes."""
from __future__ import annotations

import hashlib
import json
import time
import zlib

import numpy as np
import pytest

from fixtures.images import encode, gradient_pattern, png_declaring
from imgpipe import kafka
from imgpipe.events import ImageEvent, utc_now_iso
from tests.helpers import all_documents, read_topic, run_script, upload

pytestmark = pytest.mark.integration

CONSUME = ["--max-idle-seconds", "4", "--status-interval", "2", "--no-progress", "--workers", "2"]


def event_bytes(settings, key: str, **changes) -> bytes:
    fields = {"bucket": settings.s3_bucket, "key": key, "size": 10, "etag": "e", "last_modified": utc_now_iso(),
              "event_time": utc_now_iso(), "schema_version": 1}
    fields.update(changes)
    return json.dumps(fields).encode()  # ASCII escapes: a lone surrogate stays valid JSON


def produce(settings, messages: list[tuple[bytes | None, bytes | None, list | None]]) -> None:
    producer = kafka.producer(settings, **{"message.max.bytes": 2_000_000})
    for key, value, headers in messages:
        producer.produce(settings.kafka_topic, key=key, value=value, headers=headers)
    assert producer.flush(30) == 0


def healthy_images(settings, count: int = 6) -> list[str]:
    keys = upload(settings, {f"ok-{i}.jpg": encode(gradient_pattern(320, 240, seed=i), ".jpg") for i in range(count)})
    produce(settings, [(key.encode(), event_bytes(settings, key), None) for key in keys])
    return keys


def consume(settings, tmp_path, *extra: str, **env: str) -> dict:
    summary = tmp_path / f"summary-{len(list(tmp_path.iterdir()))}.json"
    result = run_script("consumer/image_consumer.py", [*CONSUME, "--summary-json", str(summary), *extra], settings,
                        timeout=300, **env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return {**json.loads(summary.read_text()), "log": result.stderr}


def dead_letters(settings, expected: int) -> dict[bytes | None, dict]:
    """Dead letters by their key (cut keys as written), headers decoded."""
    letters = {}
    for msg in read_topic(settings, settings.kafka_dead_letter_topic, expected=expected, timeout=30):
        letters[msg.key()] = {"headers": {k: v.decode("utf-8", "replace") for k, v in (msg.headers() or [])},
                              "value": msg.value()}
    return letters


def test_any_message_is_dead_lettered_with_a_reason_and_the_stream_goes_on(settings, tmp_path):
    good = healthy_images(settings)
    long_key = b"k" * 900_000  # close to the broker's 1 MB message limit
    hostile = {
        b"not-json": (b"this is not json {", "not JSON"),
        b"huge-integer": (b'{"schema_version": 1, "size": ' + b"9" * 4400 + b"}", "cannot parse"),
        b"deep-nesting": (b"[" * 30_000 + b"]" * 30_000, "nested too deeply"),
        b"bad-utf8": (b'{"key": "\xff\xfe"}', "not UTF-8"),
        b"null-value": (None, "no value"),
        b"json-list": (b"[1, 2, 3]", "JSON list"),
        b"lone-surrogate": (event_bytes(settings, "raw/\ud800.jpg"), "lone surrogate"),
        b"key-too-long": (event_bytes(settings, "raw/" + "x" * 1100 + ".jpg"), "longer than S3's 1024 bytes"),
        b"not-a-time": (event_bytes(settings, "raw/a.jpg", last_modified="next tuesday"), "not an ISO-8601 time"),
        b"future-schema": (event_bytes(settings, "raw/a.jpg", schema_version=99), "schema_version 99"),
        b"megabyte-of-junk": (b"\x00junk" * 100_000, "more than the"),
        long_key: (b"short value", "not JSON"),
    }
    odd_headers = [("\x00\xff weird", b"\xff" * 300), ("stage", b"forged"), ("reason", None)]
    produce(settings, [(key, value, odd_headers if key == b"not-json" else None)
                       for key, (value, _) in hostile.items()])

    summary = consume(settings, tmp_path)

    assert sorted(d["key"] for d in all_documents(settings)) == sorted(good)
    assert (summary["indexed"], summary["dead_lettered"]) == (len(good), len(hostile))
    letters = dead_letters(settings, len(hostile))
    assert len(letters) == len(hostile)
    for key, (value, reason) in hostile.items():
        letter = letters[key[:4096]]
        assert letter["headers"]["stage"] == "validate", key[:40]
        assert reason in letter["headers"]["reason"], (key[:40], letter["headers"]["reason"])
        assert letter["headers"]["source_topic"] == settings.kafka_topic
        if value is not None and len(value) > 64 * 1024:
            assert letter["headers"]["value_truncated"] == "true"
            assert letter["headers"]["original_value_bytes"] == str(len(value))
            assert letter["headers"]["original_value_sha256"] == hashlib.sha256(value).hexdigest()
            assert letter["value"] == value[:64 * 1024]
        elif value is not None:
            assert letter["value"] == value  # kept whole, so it can be redriven as it was
    cut = letters[long_key[:4096]]["headers"]
    assert cut["key_truncated"] == "true" and cut["original_key_bytes"] == str(len(long_key))
    assert cut["original_key_sha256"] == hashlib.sha256(long_key).hexdigest()
    # A forged header on the original does not leak into the dead letter's own account of it.
    assert letters[b"not-json"]["headers"]["stage"] == "validate"


def _set_dead_letter_topic_limit(settings, max_bytes: int) -> None:
    kafka.set_topic_config(settings, settings.kafka_dead_letter_topic, {"max.message.bytes": str(max_bytes)})


def test_a_dead_letter_the_broker_refuses_is_written_headers_only_or_counted_never_retried_forever(
        settings, tmp_path):
    good = healthy_images(settings, 2)
    # Random bytes: the producer compresses, so only incompressible junk is large on the wire.
    junk = np.random.default_rng(1).bytes(60_000)  # fits an event message, not a 5,000-byte dead-letter topic
    _set_dead_letter_topic_limit(settings, 5000)
    produce(settings, [(b"junk-1", junk, None)])
    first = consume(settings, tmp_path)
    assert (first["indexed"], first["dead_lettered"], first["dead_letters_minimal"]) == (2, 1, 1)
    letters = dead_letters(settings, 1)
    minimal = letters[None]["headers"]
    assert letters[None]["value"] is None and minimal["original_dropped"] == "MSG_SIZE_TOO_LARGE"
    assert minimal["original_value_bytes"] == str(len(junk)) and minimal["stage"] == "validate"
    assert (minimal["source_topic"], minimal["source_partition"]) == (settings.kafka_topic, minimal["source_partition"])

    # A topic that takes not even the headers: the refusal is logged and counted, the stream goes on.
    _set_dead_letter_topic_limit(settings, 60)
    produce(settings, [(b"junk-2", junk, None)])
    second = consume(settings, tmp_path)
    assert (second["consumed"], second["dead_letters_refused"], second["dead_lettered"]) == (1, 1, 0)
    assert "refused even a headers-only dead letter" in second["log"]
    assert sorted(d["key"] for d in all_documents(settings)) == sorted(good)


def single_colour_png(width: int, height: int) -> bytes:
    return encode(np.full((height, width, 3), (40, 120, 200), np.uint8), ".png", [16, 9])  # IMWRITE_PNG_COMPRESSION


def put_and_announce(settings, objects: dict[str, bytes]) -> list[str]:
    keys = upload(settings, objects)
    produce(settings, [(key.encode(), event_bytes(settings, key), None) for key in keys])
    return keys


def budget_letters(settings, expected: int) -> dict[str, str]:
    reasons = {}
    for letter in dead_letters(settings, expected).values():
        event = json.loads(letter["value"])
        assert letter["headers"]["stage"] == "budget", letter["headers"]
        reasons[event["key"].rsplit("/", 1)[-1]] = letter["headers"]["reason"]
    return reasons


def test_an_image_over_the_time_budget_is_stopped_and_dead_lettered(settings, tmp_path):
    good = healthy_images(settings, 4)  # a few milliseconds each
    # 49 MP of 16-bit RGBA (392 MB decoded): about 3 s of work here, six times the budget.
    slow = encode(np.full((7000, 7000, 4), (1000, 30000, 50000, 40000), np.uint16), ".png", [16, 9])
    put_and_announce(settings, {"slow-rgba16.png": slow})
    summary = consume(settings, tmp_path, PROCESSING_TIMEOUT_SECONDS="0.5", MAX_DECODE_BYTES=str(1 << 30),
                      WORKER_MEMORY_MB="0")
    assert (summary["indexed"], summary["dead_lettered"]) == (4, 1)
    assert "longer than PROCESSING_TIMEOUT_SECONDS = 0.5 s" in budget_letters(settings, 1)["slow-rgba16.png"]
    assert sorted(d["key"] for d in all_documents(settings)) == sorted(good)


def test_an_image_whose_decoded_size_is_over_budget_is_refused_from_its_header(settings, tmp_path):
    good = healthy_images(settings, 3)
    put_and_announce(settings, {
        "rgb-2000.png": single_colour_png(2000, 2000),  # 12 MB decoded: under the budget
        "rgba16-2000.png": png_declaring(2000, 2000, colour_type=6, bit_depth=16),  # 32 MB: over
        "rgb-5000x4000.png": png_declaring(5000, 4000)})  # 60 MB: over
    summary = consume(settings, tmp_path, MAX_DECODE_BYTES=str(20 * 2**20))
    reasons = budget_letters(settings, 2)
    assert "2000x2000 x 4 channel(s) x 2 byte(s)), above MAX_DECODE_BYTES = 20 MiB" in reasons["rgba16-2000.png"]
    assert "decoding needs 57 MiB (5000x4000 x 3 channel(s) x 1 byte(s))" in reasons["rgb-5000x4000.png"]
    assert (summary["indexed"], summary["dead_lettered"]) == (4, 2)
    assert {d["key"] for d in all_documents(settings)} == {*good, settings.s3_raw_prefix + "rgb-2000.png"}


def test_an_image_past_the_estimate_takes_down_only_its_own_worker(settings, tmp_path):
    good = healthy_images(settings, 6)
    put_and_announce(settings, {"big-90mp.png": single_colour_png(10000, 9000)})
    summary = consume(settings, tmp_path, WORKER_MEMORY_MB="150", MAX_DECODE_BYTES=str(1 << 30),
                      PROCESSING_TIMEOUT_SECONDS="120")
    reason = budget_letters(settings, 1)["big-90mp.png"]
    assert "memory" in reason, reason
    assert (summary["indexed"], summary["dead_lettered"]) == (6, 1)
    assert sorted(d["key"] for d in all_documents(settings)) == sorted(good)
    # Decoding happens in the workers: the consumer itself never held the 270 MB of pixels.
    assert summary["peak_rss_mb"] < 250, summary["peak_rss_mb"]


def test_a_mixed_stream_drains_and_every_message_ends_where_it_should(settings, tmp_path):
    """Healthy images interleaved with hostile messages and budget-busting objects: the consumer
    drains the topic and exits 0, every healthy image is indexed, every hostile one is in the
    dead-letter topic with its reason, and the consumer's own memory stays bounded."""
    good_objects = {f"photo-{i:02d}.jpg": encode(gradient_pattern(400, 300, seed=i), ".jpg") for i in range(12)}
    busters = {"over-estimate.png": png_declaring(9000, 9000, colour_type=6),  # 324 MB declared
               "over-memory.png": single_colour_png(10000, 9000),  # passes the estimate, not the cap
               "truncated.png": single_colour_png(600, 400)[:300],
               "bomb.png": png_declaring(30000, 30000, zlib.compress(b"\0" * 90_001 * 4))}
    good = upload(settings, good_objects)
    buster_keys = upload(settings, busters)
    hostile = [(b"junk", b"\x00\x01 not an event", None), (None, None, None),
               (b"int", b'{"schema_version": 1, "size": ' + b"7" * 5000 + b"}", None),
               (b"deep", b"{\"a\":" * 12000 + b"1" + b"}" * 12000, None),
               (b"missing-object", event_bytes(settings, settings.s3_raw_prefix + "never-uploaded.jpg"), None),
               (b"other-bucket", event_bytes(settings, "raw/x.jpg", bucket="someone-elses-bucket"), None)]
    stream = []
    for i, key in enumerate(good + buster_keys):
        stream.append((key.encode(), event_bytes(settings, key), None))
        if i < len(hostile):
            stream.append(hostile[i])
    produce(settings, stream)

    summary = consume(settings, tmp_path, MAX_DECODE_BYTES=str(300 * 2**20), WORKER_MEMORY_MB="200",
                      PROCESSING_TIMEOUT_SECONDS="60")

    assert sorted(d["key"] for d in all_documents(settings)) == sorted(good)
    expected_letters = len(hostile) + len(busters)
    assert (summary["consumed"], summary["indexed"], summary["dead_lettered"]) == (
        len(stream), len(good), expected_letters)
    stages = {}
    for msg in read_topic(settings, settings.kafka_dead_letter_topic, expected=expected_letters, timeout=30):
        headers = {k: v.decode("utf-8", "replace") for k, v in (msg.headers() or [])}
        assert headers["reason"], headers
        stages[msg.key()] = headers["stage"]
    assert len(stages) == expected_letters
    assert {stages[b"junk"], stages[b"int"], stages[b"deep"], stages[None], stages[b"other-bucket"]} == {"validate"}
    assert stages[b"missing-object"] == "fetch"
    by_name = {key.rsplit("/", 1)[-1]: stages[key.encode()] for key in buster_keys}
    assert by_name == {"over-estimate.png": "budget", "over-memory.png": "budget", "truncated.png": "decode",
                       "bomb.png": "guard"}
    assert summary["peak_rss_mb"] < 250, summary["peak_rss_mb"]


def test_the_processing_workers_start_with_the_pool_not_with_the_first_image():
    """pebble starts its workers with the first task; the pool starts them at once, so that they
    load OpenCV while the consumer joins its group instead of keeping the first image waiting."""
    import psutil

    from consumer.workers import ProcessingPool
    from fixtures.images import photo_like_jpeg
    from imgpipe.settings import Settings

    before = {p.pid for p in psutil.Process().children()}
    pool = ProcessingPool(Settings(), workers=2)
    try:
        deadline = time.monotonic() + 60
        started: set[int] = set()
        while len(started) < 2 and time.monotonic() < deadline:
            started = {p.pid for p in psutil.Process().children()} - before
            time.sleep(0.1)
        assert len(started) >= 2  # both workers up, and no image was given yet
        assert pool.process(photo_like_jpeg(1, 320, 240)).features["width"] == 320
    finally:
        pool.close()
