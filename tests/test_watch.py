"""`--watch` survives its own state file, S3 outages in the middle of a listing, and a stop in the
middle of a pass; every pass criterion counts events on the topic and keys in the state file."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from imgpipe import kafka
from imgpipe.settings import REPO_ROOT
from producer.listing import SentState
from tests.helpers import read_topic, script_env, upload, wait_for
from tests.proxy import CuttableProxy


def test_saving_the_state_is_atomic_a_crash_before_the_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    state = SentState(path)
    state.mark("raw/a.jpg", '"e1"')
    state.save()
    before = path.read_bytes()
    state.mark("raw/b.jpg", "e2")

    def crash(*_):
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        state.save()
    assert path.read_bytes() == before  # the old file, whole
    monkeypatch.undo()
    state.save()
    assert json.loads(path.read_text()) == {"raw/a.jpg": "e1", "raw/b.jpg": "e2"}
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".tmp")) == ["state.json"]


@pytest.mark.parametrize("content", [b'{"raw/a.jpg": "e1", "raw/b', b"\xff\xfe", b"[1, 2]", b'{"raw/a.jpg": 3}'])
def test_an_unreadable_state_file_is_set_aside_with_a_warning(tmp_path, content, caplog):
    path = tmp_path / "state.json"
    path.write_bytes(content)
    state = SentState(path)
    assert state.sent == {}
    [aside] = [p for p in tmp_path.iterdir() if p.name.startswith("state.json.corrupt-")]
    assert aside.read_bytes() == content and not path.exists()
    assert "set it aside" in caplog.text


def watch(settings, state, *extra: str) -> subprocess.Popen:
    args = [sys.executable, str(REPO_ROOT / "producer/image_producer.py"), "--no-progress", "--watch", "0.5",
            "--state-file", str(state), *extra]
    return subprocess.Popen(args, env=script_env(settings), cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)


def stop(watcher: subprocess.Popen) -> str:
    watcher.send_signal(signal.SIGTERM)
    _, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 0, err
    assert "Traceback" not in err
    return err


def topic_keys(settings, expected: int) -> list[str]:
    return [m.key().decode() for m in read_topic(settings, settings.kafka_topic, expected)]


def remembered(state) -> int:
    """Keys in the state file, -1 while it is missing or unreadable."""
    try:
        return len(json.loads(state.read_text()))
    except (OSError, ValueError):
        return -1


def sent_events(settings) -> int:
    return sum(kafka.end_offsets(settings, settings.kafka_topic).values())


@pytest.mark.integration
def test_a_corrupt_state_file_means_resending_not_exiting(settings, tmp_path):
    keys = upload(settings, {"c1.png": b"1", "c2.png": b"2"})
    state = tmp_path / "state.json"
    state.write_text('{"' + keys[0] + '": "trunc')  # a write cut short by a full disk
    watcher = watch(settings, state)
    try:
        wait_for(lambda: remembered(state) == 2, 60, "a new state file")
    finally:
        err = stop(watcher)
    assert "unreadable" in err and "set it aside" in err
    assert len(list(tmp_path.glob("state.json.corrupt-*"))) == 1
    assert sorted(topic_keys(settings, 2)) == sorted(keys)


@pytest.mark.integration
@pytest.mark.slow
def test_an_s3_outage_in_the_middle_of_a_listing_is_retried_and_every_object_sent_once(settings, tmp_path):
    count = 1200  # two listing pages (S3 returns at most 1,000 keys per page)
    keys = upload(settings, {f"many/{i:05d}.png": b"x" for i in range(count)})
    proxy = CuttableProxy(int(settings.s3_endpoint_url.rsplit(":", 1)[1]))
    proxy.enable()
    state = tmp_path / "state.json"
    # Paced, so that the second page is asked for while S3 is unreachable.
    watcher = watch(settings.with_overrides(s3_endpoint_url=proxy.url), state, "--rate", "300")
    try:
        wait_for(lambda: sent_events(settings) >= 50, 60, "the first events", interval=0.1)
        proxy.disable()
        wait_for(lambda: sent_events(settings) >= 1000, 60, "the first page", interval=0.2)
        time.sleep(8)  # the second page fails while the proxy is cut (past botocore's own 3 attempts)
        proxy.enable()
        wait_for(lambda: remembered(state) == count, 120, "the whole pass")
    finally:
        err = stop(watcher)
        proxy.disable()
    assert "retrying" in err, err[-3000:]
    sent = topic_keys(settings, count)
    assert len(sent) == count and sorted(sent) == sorted(keys)  # each exactly once


@pytest.mark.integration
def test_sigterm_is_honoured_within_a_pass(settings, tmp_path):
    keys = upload(settings, {f"slow-{i:03d}.png": b"x" for i in range(200)})
    state = tmp_path / "state.json"
    watcher = watch(settings, state, "--rate", "20")  # a 10 s pass
    wait_for(lambda: sent_events(settings) >= 10, 60, "the first events", interval=0.1)
    err = stop(watcher)
    delivered = json.loads(state.read_text())
    # Stopped in the middle: fewer than all, and exactly the delivered ones are remembered.
    assert 10 <= len(delivered) < len(keys)
    assert sorted(delivered) == sorted(topic_keys(settings, len(delivered)))
    assert f"sent {len(delivered)}, failed 0" in err
