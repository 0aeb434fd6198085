"""Shared test helpers: run the real scripts, put objects in S3, read the index and topics back."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from imgpipe.clients import consumer_config, meili_client, s3_client
from imgpipe.settings import REPO_ROOT, Settings, to_env


def script_env(settings: Settings, **extra: str) -> dict[str, str]:
    return {**os.environ, **to_env(settings), **extra}


def run_script(script: str, args: list[str], settings: Settings, timeout: float = 180,
               **extra_env: str) -> subprocess.CompletedProcess:
    """Run one of the project's scripts as a user would, with these settings in its environment."""
    return subprocess.run([sys.executable, str(REPO_ROOT / script), *args], env=script_env(settings, **extra_env),
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def start_script(script: str, args: list[str], settings: Settings, log_path: Path, **extra_env: str) -> subprocess.Popen:
    out = open(log_path, "wb")
    return subprocess.Popen([sys.executable, str(REPO_ROOT / script), *args], env=script_env(settings, **extra_env),
                            cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)


def encode(image: np.ndarray, ext: str, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, image, params or [])
    assert ok
    return buf.tobytes()


def sample_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A colourful image with some structure (edges, gradients), deterministic per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)),
                    np.full_like(x, int(rng.integers(0, 255)))], axis=-1).astype(np.uint8)
    for _ in range(3):
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        cv2.circle(img, (cx, cy), max(2, min(width, height) // 5), tuple(int(v) for v in rng.integers(0, 255, 3)), -1)
    return img


def upload(settings: Settings, objects: dict[str, bytes]) -> list[str]:
    """Put objects under the raw prefix; returns their full keys."""
    s3 = s3_client(settings)
    keys = [settings.s3_raw_prefix + name for name in objects]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: s3.put_object(Bucket=settings.s3_bucket, Key=kv[0], Body=kv[1]),
                      zip(keys, objects.values())))
    return keys


def all_documents(settings: Settings) -> list[dict]:
    index = meili_client(settings).index(settings.meili_index)
    docs, offset = [], 0
    while True:
        page = index.get_documents({"offset": offset, "limit": 1000})
        docs.extend(dict(d) for d in page.results)
        offset += len(page.results)
        if offset >= page.total or not page.results:
            return [{k: v for k, v in d.items() if not k.startswith("_")} for d in docs]


def read_topic(settings: Settings, topic: str, expected: int, timeout: float = 60) -> list:
    """Every message of a topic from the start, until `expected` arrived or the time is up."""
    from confluent_kafka import Consumer

    consumer = Consumer(consumer_config(settings, group_id=f"reader-{time.monotonic_ns()}"))
    consumer.subscribe([topic])
    messages = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                messages.append(msg)
            if len(messages) >= expected:
                # Linger briefly so that extra (unexpected) messages are seen too.
                extra_deadline = time.monotonic() + 1.0
                while time.monotonic() < extra_deadline:
                    msg = consumer.poll(0.2)
                    if msg is not None and not msg.error():
                        messages.append(msg)
                break
    finally:
        consumer.close()
    return messages


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
