"""`make demo`'s flow on a small corpus, against the real stack: the numbers it prints agree with
the index, the dead-letter topic and the MapReduce output."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from demo.corpus import BROKEN_FILES
from imgpipe.settings import REPO_ROOT
from tests.helpers import all_documents, read_topic, script_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_on_a_small_corpus_reports_what_the_stack_holds(settings, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "demo", "--count", "40", "--runner", "pipe", "--out", str(out)],
                            cwd=REPO_ROOT, env=script_env(settings), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((out / "demo_summary.json").read_text())

    # The real-time step at the end: uploads through the S3 server's notifications, one deleted again.
    live = report["live"]
    everything = {d["key"] for d in all_documents(settings)}
    uploaded = {key for key, _ in live["uploads"]}
    assert len(uploaded) == 5 and live["deleted_key"] in uploaded and live["delete_s"] is not None
    assert not uploaded & everything  # searchable while they existed, gone with their objects
    assert "real time: PUT -> searchable" in result.stdout
    docs = all_documents(settings)
    assert report["index_documents"] == report["indexed"] == len(docs)
    assert report["indexed"] + report["dead_lettered"] == report["produced"] == report["uploaded"]
    assert report["dead_lettered"] == len(BROKEN_FILES)

    dead = read_topic(settings, settings.kafka_dead_letter_topic, expected=len(BROKEN_FILES))
    assert sorted(json.loads(m.value())["key"] for m in dead) == sorted(key for key, _ in report["dead_letters"])
    assert all(key.startswith(settings.s3_raw_prefix + "broken/") for key, _ in report["dead_letters"])

    with open(out / "image_metadata.csv", encoding="utf-8", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(docs)
    formats = {}
    for part in (out / "mapreduce").glob("part-*"):
        for line in part.read_text().splitlines():
            dimension, value, count, *_ = line.split("\t")
            if dimension == "format":
                formats[value] = int(count)
    expected = {}
    for doc in docs:
        expected[doc["format"]] = expected.get(doc["format"], 0) + 1
    assert formats == expected

    for chart in report["charts"]:
        assert (out / chart.rsplit("/", 1)[-1]).stat().st_size > 1000
    assert len(report["charts"]) >= 5
    assert "demo summary" in result.stdout and "dead letters" in result.stdout

    # The enricher ran after the consumer: faces found, and a word only inside a scan found.
    assert report["enriched"] == len(docs) and report["enricher_dead_lettered"] == 0
    assert any("astronaut" in key for key, _ in report["with_faces"])
    assert [key.rsplit("/", 1)[-1] for key, _ in report["text_hits"]] == ["receipt-0001.png"]
    assert "Zebrafish food" in report["text_hits"][0][1]
    assert "search for 'zebrafish', a word found only inside an image:" in result.stdout


def test_running_the_demo_twice_gives_the_same_index(settings, tmp_path):
    runs = []
    for attempt in range(2):
        out = tmp_path / f"run{attempt}"
        result = subprocess.run([sys.executable, "-m", "demo", "--count", "30", "--runner", "pipe", "--out", str(out)],
                                cwd=REPO_ROOT, env=script_env(settings), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
        docs = all_documents(settings)
        runs.append(sorted((d["id"], d["sha256"], d["width"], d["height"]) for d in docs))
        summary = sorted((out / "mapreduce").glob("part-*"))
        # The summary's day and hour rows count by processing time: two runs either side of an
        # hour (or a midnight) differ there and nowhere else.
        runs[-1].append(tuple("".join(line for line in p.read_text().splitlines(keepends=True)
                                      if not line.startswith(("day\t", "hour\t"))) for p in summary))
    assert runs[0] == runs[1]
