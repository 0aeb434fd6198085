"""What the dashboard tests show (this module holds no tests): an index of known documents with
thumbnails and grayscale versions in S3, one hostile key, a forged document pointing outside
S3_PROCESSED_PREFIX, dead letters in the test's dead-letter topic, and a real Prometheus
endpoint exposing the consumer's metric names."""
from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass

from fixtures.documents import random_descriptor
from imgpipe import kafka, meili, s3
from imgpipe.document import EMBEDDER_SETTINGS, INDEX_SETTINGS, document_id
from tests.test_visualize_data import make_doc, thumbnail_bytes

# A key that is markup, a terminal escape, a bidi override and a quote at once.
HOSTILE_NAME = '<script>alert("key")</script>\x1b[2J\u202egnp.exe\'"&.png'
COUNT = 30


@dataclass
class DashboardIndex:
    docs: list[dict]  # the documents indexed, the hostile one last but one
    hostile: dict
    forged: dict  # indexed, with a thumbnail_key outside the processed prefix (an object that exists)
    thumbnails: dict[str, bytes]  # document id -> the thumbnail bytes in S3


def build(settings, with_vectors: bool = True) -> DashboardIndex:
    """COUNT known documents (thumbnails and grayscale versions uploaded for all but the 6th),
    the hostile one and the forged one, in the isolated index, with descriptors: document 1
    looks almost exactly like document 0."""
    docs = [make_doc(i, settings) for i in range(COUNT)]
    hostile = make_doc(COUNT, settings, name=HOSTILE_NAME)
    forged = make_doc(COUNT + 1, settings, name="forged.png")
    secret_key = f"{settings.s3_raw_prefix}secret.jpg"
    forged["thumbnail_key"] = secret_key
    forged["grayscale_key"] = f"{settings.s3_processed_prefix}grayscale/../../{secret_key}"
    everything = docs + [hostile, forged]
    if with_vectors:
        for i, doc in enumerate(everything):
            doc["_vectors"] = {"image": random_descriptor(i)}
        near = [v + 0.001 for v in random_descriptor(0)]
        docs[1]["_vectors"] = {"image": near}
    client = meili.client(settings, key=settings.meili_master_key)  # as set-up does
    task = client.create_index(settings.meili_index, {"primaryKey": "id"})
    client.wait_for_task(task.task_uid, timeout_in_ms=30000)
    index = client.index(settings.meili_index)
    index_settings = {**INDEX_SETTINGS, **(EMBEDDER_SETTINGS if with_vectors else {})}
    done = client.wait_for_task(index.update_settings(index_settings).task_uid, timeout_in_ms=60000)
    assert done.status == "succeeded", done.error
    done = client.wait_for_task(index.add_documents(everything, primary_key="id").task_uid, timeout_in_ms=60000)
    assert done.status == "succeeded", done.error

    store = s3.client(settings)
    thumbnails = {}
    for i, doc in enumerate(docs + [hostile]):
        if i == 5:
            continue  # a document whose derived images are missing
        thumbnails[doc["id"]] = thumbnail_bytes(i)
        s3.put(store, settings.s3_bucket, doc["thumbnail_key"], thumbnails[doc["id"]], "image/jpeg")
        s3.put(store, settings.s3_bucket, doc["grayscale_key"], thumbnail_bytes(i, 128, 96), "image/jpeg")
    s3.put(store, settings.s3_bucket, secret_key, thumbnail_bytes(99), "image/jpeg")
    return DashboardIndex(docs + [hostile, forged], hostile, forged, thumbnails)


def write_dead_letters(settings, letters: list[tuple[str, str, str]]) -> None:
    """(object key, stage, reason) dead letters, oldest first, one second apart, spread over the
    partitions of the dead-letter topic, with the headers the consumer writes."""
    producer = kafka.producer(settings)
    # Recent timestamps: the broker deletes records older than the topic's retention (7 days), so
    # a fixed date in the past makes the letters vanish whenever its retention check runs between
    # this write and the read (it did, a year after the date was written).
    base = int(time.time() * 1000) - 1000 * len(letters)
    for i, (key, stage, reason) in enumerate(letters):
        event = json.dumps({"schema_version": 1, "bucket": settings.s3_bucket, "key": key}).encode()
        headers = [("error_class", b"MessageError"), ("stage", stage.encode()), ("reason", reason.encode()),
                   ("attempts", b"1"), ("failed_at", f"2025-11-24T16:{i:02d}:00.000Z".encode()),
                   ("source_topic", settings.kafka_topic.encode()), ("source_partition", b"0"),
                   ("source_offset", str(i).encode())]
        producer.produce(settings.kafka_dead_letter_topic, key=key.encode(), value=event, headers=headers,
                         partition=i % 3, timestamp=base + i * 1000)
    assert producer.flush(30) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MetricsEndpoint:
    """The consumer's own metrics (imgpipe.metrics.ConsumerMetrics), served on 127.0.0.1 by
    prometheus-client's HTTP server as the consumer serves them."""

    def __init__(self):
        from prometheus_client import start_http_server

        from imgpipe.metrics import ConsumerMetrics

        self.metrics = ConsumerMetrics()
        self.port = free_port()
        self.server, self.thread = start_http_server(self.port, addr="127.0.0.1", registry=self.metrics.registry)
        self.url = f"http://127.0.0.1:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def keys_of(settings) -> list[str]:
    """Every secret that must never reach a browser."""
    import os

    secrets = [settings.meili_master_key, settings.meili_admin_key, settings.meili_search_key,
               os.environ.get("AWS_SECRET_ACCESS_KEY", ""), os.environ.get("AWS_ACCESS_KEY_ID", "")]
    return [s for s in secrets if s]


def hostile_id(settings) -> str:
    return document_id(settings.s3_bucket, f"{settings.s3_raw_prefix}{HOSTILE_NAME}")
