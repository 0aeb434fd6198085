"""Awkward and hostile files through the whole pipeline: valid ones indexed with their display
dimensions, invalid ones dead-lettered with a precise reason, the consumer never crashes and
its memory stays bounded (bombs are rejected from their header, never decoded)."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from fixtures.images import awkward_samples
from tests.helpers import REPO_ROOT, all_documents, read_topic, run_script, script_env, upload

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Awkward names on top of awkward content: each sample is stored under a key like these.
NAME_DECORATIONS = ["{}", "with space {}", "unicodé ü {}", "hash#{}", "per%cent {}", "plus+{}", "semi;colon {}"]


def test_awkward_corpus_end_to_end(settings, tmp_path):
    samples = awkward_samples()
    objects, expectations = {}, {}
    for i, (name, (data, expectation)) in enumerate(sorted(samples.items())):
        key = NAME_DECORATIONS[i % len(NAME_DECORATIONS)].format(name)
        objects[key] = data
        expectations[settings.s3_raw_prefix + key] = expectation
    upload(settings, objects)
    assert run_script("producer/image_producer.py", ["--no-progress"], settings).returncode == 0
    summary = tmp_path / "summary.json"
    consumed = run_script("consumer/image_consumer.py", ["--max-idle-seconds", "4", "--no-progress",
                                                         "--summary-json", str(summary)], settings)
    assert consumed.returncode == 0, consumed.stderr[-3000:]

    good = {k: e for k, e in expectations.items() if e["ok"]}
    bad = {k: e for k, e in expectations.items() if not e["ok"]}
    docs = {d["key"]: d for d in all_documents(settings)}
    assert sorted(docs) == sorted(good)
    for key, expectation in good.items():
        doc = docs[key]
        for field in ("format", "width", "height", "channels", "bit_depth"):
            if field in expectation:
                assert doc[field] == expectation[field], (key, field, doc[field])

    dead = {json.loads(m.value())["key"]: {k: v.decode() for k, v in m.headers()}
            for m in read_topic(settings, settings.kafka_dead_letter_topic, expected=len(bad))}
    assert sorted(dead) == sorted(bad)
    for key, expectation in bad.items():
        assert dead[key]["stage"] == expectation["stage"], key
        assert expectation["reason_contains"] in dead[key]["reason"], (key, dead[key]["reason"])

    result = json.loads(summary.read_text())
    assert result["indexed"] == len(good) and result["dead_lettered"] == len(bad)
    # A decoded 400-megapixel bomb alone would need 1.2 GB; the consumer stays far below.
    assert result["peak_rss_mb"] < 400


def test_consumer_only_reads_allowed_buckets(settings):
    from imgpipe import s3

    client = s3.client(settings)
    other = f"other-{settings.meili_index.replace('_', '-')}"
    client.create_bucket(Bucket=other)
    client.put_object(Bucket=other, Key="secret.png", Body=b"\x89PNG private")
    produced = run_script("producer/image_producer.py", ["--no-progress", "--bucket", other, "--prefix", ""], settings)
    assert produced.returncode == 0, produced.stderr
    consumed = run_script("consumer/image_consumer.py", ["--max-idle-seconds", "4", "--no-progress"], settings)
    assert consumed.returncode == 0
    assert all_documents(settings) == []
    dead = read_topic(settings, settings.kafka_dead_letter_topic, expected=1)
    assert len(dead) == 1
    headers = {k: v.decode() for k, v in dead[0].headers()}
    assert headers["stage"] == "validate" and "not in the allowed buckets" in headers["reason"]


def test_a_missing_output_bucket_exits_2_naming_it_and_stops_the_workers_it_started(settings):
    """The processing pool starts before the start-up checks (its workers load OpenCV meanwhile);
    a check that fails must stop them, not leave them running or keep the consumer from exiting."""
    import psutil

    missing = settings.with_overrides(s3_bucket=f"no-such-bucket-{settings.meili_index.replace('_', '-')}")
    proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "consumer/image_consumer.py"), "--no-progress"],
                            env=script_env(missing), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    workers: set[psutil.Process] = set()
    parent = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            workers.update(parent.children(recursive=True))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr
    assert f"bucket '{missing.s3_bucket}' (S3_BUCKET) does not exist" in stderr and "Traceback" not in stderr
    assert workers, "the consumer started no worker before its checks"
    _, alive = psutil.wait_procs(list(workers), timeout=10)
    assert not alive, f"worker processes left running: {[p.pid for p in alive]}"
