"""consumer/redrive.py: dead letters go back through the pipeline once their cause is fixed;
a dry run sends nothing; redriving twice is harmless; a cut dead letter is redriven from the
original in the source topic."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fixtures.images import encode, gradient_pattern
from imgpipe import kafka
from imgpipe.events import ImageEvent, utc_now_iso
from tests.helpers import all_documents, read_topic, run_script, upload

pytestmark = pytest.mark.integration

CONSUME = ["--max-idle-seconds", "4", "--no-progress", "--workers", "1"]


def images(names):
    return {name: encode(gradient_pattern(160, 120, seed=i), ".jpg") for i, name in enumerate(names)}


def announce(settings, keys, extra=()):
    producer = kafka.producer(settings)
    for key in keys:
        producer.produce(settings.kafka_topic, key=key.encode(),
                         value=ImageEvent(settings.s3_bucket, key, 10, "e", utc_now_iso(), utc_now_iso()).to_json())
    for key, value in extra:
        producer.produce(settings.kafka_topic, key=key, value=value)
    assert producer.flush(30) == 0


def consume(settings):
    result = run_script("consumer/image_consumer.py", CONSUME, settings, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def redrive(settings, *args):
    return run_script("consumer/redrive.py", list(args), settings, timeout=120)


def topic_size(settings, topic):
    return sum(kafka.end_offsets(settings, topic).values())


def test_dead_letters_are_redriven_after_the_fix_and_twice_is_harmless(settings):
    present = upload(settings, images(["a.jpg", "b.jpg", "c.jpg"]))
    late = [settings.s3_raw_prefix + name for name in ("late-1.jpg", "late-2.jpg")]
    announce(settings, present + late, extra=[(b"junk", b"not an event")])
    consume(settings)
    assert len(all_documents(settings)) == 3
    assert len(read_topic(settings, settings.kafka_dead_letter_topic, expected=3, timeout=30)) == 3

    before = topic_size(settings, settings.kafka_topic)
    dry = redrive(settings, "--stage", "fetch", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "2 of 3 dead letters match; fetch 2; nothing sent" in dry.stderr
    assert all(key.rsplit("/", 1)[-1] in dry.stdout for key in late) and "junk" not in dry.stdout
    assert topic_size(settings, settings.kafka_topic) == before

    listed = redrive(settings, "--stage", "validate", "--dry-run", "--json")
    assert [json.loads(line)["key"] for line in listed.stdout.splitlines()] == ["junk"]
    assert "0 of 3" in redrive(settings, "--since", "2999-01-01T00:00:00Z", "--dry-run").stderr

    upload(settings, images(["late-1.jpg", "late-2.jpg"]))  # the fix: the objects now exist
    sent = redrive(settings, "--stage", "fetch")
    assert sent.returncode == 0, sent.stderr
    assert "redrive: 2 of 2 matching dead letters (of 3) sent" in sent.stderr
    consume(settings)
    assert sorted(d["key"] for d in all_documents(settings)) == sorted(present + late)

    again = redrive(settings, "--stage", "fetch")
    assert again.returncode == 0 and "2 of 2" in again.stderr
    consume(settings)
    documents = all_documents(settings)
    assert sorted(d["key"] for d in documents) == sorted(present + late)  # each once
    assert len(read_topic(settings, settings.kafka_dead_letter_topic, expected=3, timeout=10)) == 3  # none new


def test_a_cut_dead_letter_is_redriven_from_its_original(settings):
    junk = np.random.default_rng(2).bytes(70_000)  # more than a dead letter keeps
    announce(settings, [], extra=[(b"big-junk", junk)])
    consume(settings)
    [letter] = read_topic(settings, settings.kafka_dead_letter_topic, expected=1, timeout=30)
    assert dict(letter.headers())["value_truncated"] == b"true" and len(letter.value()) < len(junk)

    end = kafka.end_offsets(settings, settings.kafka_topic)
    sent = redrive(settings)
    assert sent.returncode == 0 and "1 of 1" in sent.stderr, sent.stderr
    [redriven] = kafka.read_messages(settings, settings.kafka_topic, start=end)
    assert redriven.value() == junk and redriven.key() == b"big-junk"
    assert dict(redriven.headers())["redriven_from"].startswith(settings.kafka_dead_letter_topic.encode())


def test_bad_options_are_one_line_and_exit_2(settings):
    for args, says in ((["--since", "yesterday"], "--since must be an ISO-8601 time"),
                       (["--limit", "0"], "--limit must be at least 1"),
                       (["--json"], "--json goes with --dry-run")):
        result = redrive(settings, *args)
        assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr
