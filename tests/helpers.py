"""Shared test helpers: run the real scripts, put objects in S3, read the index and topics back."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fixtures.images import encode, gradient_pattern
from imgpipe import kafka, meili, s3
from imgpipe.settings import REPO_ROOT, Settings, to_env

__all__ = ["admin", "all_documents", "encode", "gradient_pattern", "read_topic", "run_script", "script_env",
           "start_script", "upload", "wait_for"]


def admin(settings: Settings) -> Settings:
    """The same settings indexing with the master key: for a test's own set-up and checks (create or
    delete an index, read its stats), which the stack's least-privilege consumer key may not do."""
    return settings.with_overrides(meili_admin_key=settings.meili_master_key)


def script_env(settings: Settings, **extra: str) -> dict[str, str]:
    return {**os.environ, **to_env(settings), **extra}


def run_script(script: str, args: list[str], settings: Settings, timeout: float = 180,
               **extra_env: str) -> subprocess.CompletedProcess:
    """Run one of the project's scripts as a user would, with these settings in its environment."""
    return subprocess.run([sys.executable, str(REPO_ROOT / script), *args], env=script_env(settings, **extra_env),
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def produce(settings: Settings, keys: Sequence[str] = ()) -> None:
    """The producer's events for the settings' bucket: every object it lists, or just `keys`."""
    result = run_script("producer/image_producer.py",
                        ["--no-progress", *(arg for key in keys for arg in ("--key", key))], settings)
    assert result.returncode == 0, result.stderr


def start_script(script: str, args: list[str], settings: Settings, log_path: Path, **extra_env: str) -> subprocess.Popen:
    out = open(log_path, "wb")
    return subprocess.Popen([sys.executable, str(REPO_ROOT / script), *args], env=script_env(settings, **extra_env),
                            cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)


def upload(settings: Settings, objects: dict[str, bytes]) -> list[str]:
    """Put objects under the raw prefix; returns their full keys."""
    keys = [settings.s3_raw_prefix + name for name in objects]
    s3.put_many(s3.client(settings), settings.s3_bucket,
                ((key, data, "application/octet-stream") for key, data in zip(keys, objects.values())), workers=8)
    return keys


def all_documents(settings: Settings) -> list[dict]:
    """Every document of the settings' index, read with the master key (without `_` fields)."""
    reader = meili.DocumentReader(settings, settings.meili_index, key=settings.meili_master_key or settings.indexing_key)
    return [{k: v for k, v in d.items() if not k.startswith("_")} for d in reader]


def read_topic(settings: Settings, topic: str, expected: int, timeout: float = 60) -> list:
    """Every message of a topic from the start: once `expected` are there or the time is up, the
    messages up to the end of the topic at that moment (so unexpected extra ones are seen too)."""
    deadline = time.monotonic() + timeout
    while sum(kafka.end_offsets(settings, topic).values()) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return kafka.read_messages(settings, topic, timeout=max(5.0, deadline - time.monotonic()))


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def python37() -> str | None:
    """A working Python 3.7 on this machine (pyenv keeps one), or None: the oldest Python the
    streaming scripts meet (EMR 6.x nodes; EMR 7 has 3.9)."""
    import glob
    import shutil

    candidates = [shutil.which("python3.7")] + sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.7*/bin/python3.7")))
    for candidate in filter(None, candidates):
        if not os.path.exists(candidate):
            continue
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 7))"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return candidate
    return None


def require_python37() -> str:
    """python37(), or a visible skip on a machine without it (a failure under CI)."""
    import pytest

    python = python37()
    if python is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs Python 3.7 to check the streaming scripts (pyenv install 3.7.16)")
        pytest.skip("no Python 3.7 here (pyenv install 3.7.16) to run the streaming scripts under")
    return python
