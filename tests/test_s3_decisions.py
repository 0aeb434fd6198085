"""S3's answers decided per request: what is about one object is dead-lettered, an outage (or
credentials refused for everything) is retried and nothing past it is committed.

These need answers the local S3 server never gives (IAM denial of one key, an archived object),
so S3 here is a moto server with IAM enforcement, started by the test: a real S3 protocol server
holding the data, with AWS's own error codes.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from fixtures.images import encode, gradient_pattern
from imgpipe import aws, kafka, meili, s3
from tests.helpers import all_documents, read_topic, run_script, start_script, wait_for

pytestmark = pytest.mark.integration

BUCKET = "decisions"
# Requests moto serves before it starts checking credentials: enough to set the scene up as root.
SETUP_REQUESTS = 7


@pytest.fixture
def moto_s3(settings, tmp_path, monkeypatch):
    # boto3 signs with whatever key it finds; moto's set-up requests need one. Set for this test
    # only: a key left in os.environ would change what later tests' clients send.
    if not os.environ.get("AWS_ACCESS_KEY_ID"):
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "local-test-key")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(tmp_path / "moto.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_REQUESTS)},
                              stdout=log, stderr=subprocess.STDOUT)
    local = settings.with_overrides(s3_endpoint_url=f"http://127.0.0.1:{port}", s3_bucket=BUCKET,
                                    s3_allowed_buckets=(BUCKET,))
    wait_for(lambda: _answers(port), 30, "the moto server")
    try:
        yield local
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def set_the_scene(local) -> dict[str, str]:
    """Objects (one archived) and an IAM user allowed everything but reading one key; returns
    that user's credentials."""
    client = s3.client(local)
    image = encode(gradient_pattern(200, 150), ".jpg")
    client.create_bucket(Bucket=BUCKET)
    for name in ("ok.jpg", "secret.jpg"):
        client.put_object(Bucket=BUCKET, Key=local.s3_raw_prefix + name, Body=image)
    client.put_object(Bucket=BUCKET, Key=local.s3_raw_prefix + "cold.jpg", Body=image, StorageClass="GLACIER")
    iam = aws.client(local, "iam")
    iam.create_user(UserName="consumer")
    key = iam.create_access_key(UserName="consumer")["AccessKey"]
    iam.put_user_policy(UserName="consumer", PolicyName="all-but-one", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
            {"Effect": "Deny", "Action": "s3:GetObject",
             "Resource": f"arn:aws:s3:::{BUCKET}/{local.s3_raw_prefix}secret.jpg"}]}))
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


def announce(local, names: list[str]) -> None:
    from imgpipe.events import ImageEvent, utc_now_iso

    producer = kafka.producer(local)
    for name in names:
        key = local.s3_raw_prefix + name
        event = ImageEvent(BUCKET, key, 10, "e", utc_now_iso(), utc_now_iso())
        producer.produce(local.kafka_topic, key=key.encode(), value=event.to_json())
    assert producer.flush(30) == 0


def test_what_is_about_one_object_is_dead_lettered_and_the_rest_indexed(moto_s3, monkeypatch, tmp_path):
    local = moto_s3
    monkeypatch.setenv("AWS_ENDPOINT_URL_IAM", local.s3_endpoint_url)
    credentials = set_the_scene(local)
    announce(local, ["ok.jpg", "secret.jpg", "cold.jpg", "gone.jpg"])
    result = run_script("consumer/image_consumer.py", ["--max-idle-seconds", "4", "--no-progress", "--workers", "1"],
                        local, timeout=240, **credentials)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [d["key"] for d in all_documents(local)] == [local.s3_raw_prefix + "ok.jpg"]
    reasons = {}
    for msg in read_topic(local, local.kafka_dead_letter_topic, expected=3, timeout=30):
        headers = {k: v.decode() for k, v in msg.headers()}
        assert headers["stage"] == "fetch"
        reasons[json.loads(msg.value())["key"].rsplit("/", 1)[-1]] = headers["reason"]
    assert set(reasons) == {"secret.jpg", "cold.jpg", "gone.jpg"}
    assert "access denied for this object, while the bucket answers (AccessDenied" in reasons["secret.jpg"]
    assert "archived" in reasons["cold.jpg"] and "InvalidObjectState" in reasons["cold.jpg"]
    assert "does not exist" in reasons["gone.jpg"]


def test_credentials_refused_for_everything_are_an_outage_retried_not_dead_letters(moto_s3, monkeypatch, tmp_path):
    local = moto_s3
    monkeypatch.setenv("AWS_ENDPOINT_URL_IAM", local.s3_endpoint_url)
    set_the_scene(local)
    announce(local, ["ok.jpg", "secret.jpg"])
    log = tmp_path / "consumer.log"
    proc = start_script("consumer/image_consumer.py", ["--no-progress", "--workers", "1"], local, log,
                        AWS_ACCESS_KEY_ID="AKIAUNKNOWNUNKNOWN00", AWS_SECRET_ACCESS_KEY="wrong")
    try:
        wait_for(lambda: "InvalidAccessKeyId" in log.read_text(), 90, "the retry warning")
        time.sleep(3)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "Traceback" not in text
    assert read_topic(local, local.kafka_dead_letter_topic, expected=1, timeout=3) == []
    assert all(offset < 0 for offset in kafka.committed_offsets(local, local.kafka_topic).values())
    assert not meili.index_exists(local, local.meili_index) or meili.document_count(local, local.meili_index) == 0
