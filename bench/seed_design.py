"""`seed_design`: the consumer the project's original brief describes, written plainly, as the
yardstick the pipeline must beat.

For each message: GET the object, decode it at full size, resize a thumbnail, make a grayscale
copy, and `add_documents([doc])`, one request per image, never waiting for the task. One process,
one thread, auto-committed offsets: no guard, no retries, no dead letters, no derived images
stored. It builds its clients itself, as such a script would (the pipeline's own go through
imgpipe); nothing in it is slowed on purpose.

    python -m bench.seed_design --max-idle-seconds 4 --summary-json /tmp/seed.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.seed_design", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-idle-seconds", type=float, default=4.0)
    p.add_argument("--summary-json", type=Path, required=True)
    args = p.parse_args(argv)

    import boto3
    import cv2
    import meilisearch
    import numpy as np
    from botocore.config import Config
    from confluent_kafka import Consumer

    from imgpipe.settings import load_settings

    settings = load_settings()
    cv2.setNumThreads(1)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": settings.kafka_consumer_group,
                         "auto.offset.reset": "earliest", **settings.kafka_client_config})
    consumer.subscribe([settings.kafka_topic])
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url or None, region_name=settings.aws_region,
                      config=Config(s3={"addressing_style": "path"}))
    index = meilisearch.Client(settings.meili_url, settings.indexing_key).index(settings.meili_index)
    done = failed = 0
    first = last = None
    idle_since = time.monotonic()
    cpu_first = cpu_last = 0.0
    while time.monotonic() - idle_since < args.max_idle_seconds:
        msg = consumer.poll(0.2)
        if msg is None or msg.error():
            continue
        idle_since = time.monotonic()
        if first is None:
            first, cpu_first = time.monotonic(), time.process_time()
        try:
            event = json.loads(msg.value())
            data = s3.get_object(Bucket=event["bucket"], Key=event["key"])["Body"].read()
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            height, width = image.shape[:2]
            scale = 256 / max(width, height)
            thumbnail = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))))
            gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
            doc = {"id": f"{msg.partition()}-{msg.offset()}", "key": event["key"], "width": width, "height": height,
                   "size": len(data), "mean_brightness": float(gray.mean()), "thumbnail_width": thumbnail.shape[1]}
            index.add_documents([doc], primary_key="id")
            done += 1
        except Exception:  # the brief's consumer logs and moves on
            failed += 1
        last, cpu_last = time.monotonic(), time.process_time()
    consumer.close()
    busy = (last - first) if first is not None and last is not None else None
    args.summary_json.write_text(json.dumps({
        "processed": done, "failed": failed, "active_seconds": busy,
        "active_images_per_second": (done + failed) / busy if busy else None,
        "active_cpu_seconds": cpu_last - cpu_first}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
