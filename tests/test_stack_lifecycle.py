"""`python -m stack up|status|down` on a second, private stack: idempotent up, honest status,
and down leaves no process behind."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from imgpipe.settings import REPO_ROOT, settings_from_mapping, to_env
from stack.services import S3, MeiliSearch, all_services

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def free_port_block() -> int:
    """A base port p with p, p+1 (Kafka controller), p+2, p+3 and p+4 (Kafka's SASL listener) all free."""
    for base in range(29100, 29900, 10):
        sockets = []
        try:
            for offset in range(5):
                s = socket.socket()
                s.bind(("127.0.0.1", base + offset))
                sockets.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise AssertionError("no free ports")


def private_stack(stack, state: Path):
    """Settings of a second stack on free ports with its own state folder, and a function that
    runs `python -m stack <command>` for it. It reuses the session's MeiliSearch and versitygw
    binaries instead of fetching and building them again."""
    base = free_port_block()
    private = settings_from_mapping({
        **to_env(stack),
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{base}", "MEILI_URL": f"http://127.0.0.1:{base + 2}",
        "S3_ENDPOINT_URL": f"http://127.0.0.1:{base + 3}", "LOCAL_STATE_DIR": str(state),
        "MEILI_ADMIN_KEY": "", "MEILI_SEARCH_KEY": ""})
    env = {**os.environ, **to_env(private), "KAFKA_CONTROLLER_PORT": str(base + 1), "KAFKA_SASL_PORT": str(base + 4),
           "MEILI_BINARY": str(MeiliSearch(stack).binary), "VERSITYGW_BINARY": str(S3(stack).binary)}

    def stack_cli(command: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "stack", command], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=300)

    return private, stack_cli


def test_up_is_idempotent_and_down_leaves_nothing_running(stack, tmp_path):
    private, stack_cli = private_stack(stack, tmp_path / "state")
    env_file = REPO_ROOT / ".env"
    env_file_before = env_file.read_bytes()

    try:
        first = stack_cli("up")
        assert first.returncode == 0, first.stdout + first.stderr
        pids = {s.name: s.pid() for s in all_services(private)}
        assert all(pids.values()), pids
        second = stack_cli("up")
        assert second.returncode == 0
        assert {s.name: s.pid() for s in all_services(private)} == pids  # nothing restarted

        status = stack_cli("status")
        assert status.returncode == 0
        for name, pid in pids.items():
            assert name in status.stdout and str(pid) in status.stdout and "healthy" in status.stdout

        from imgpipe import kafka

        topics = kafka.list_topics(private).topics
        assert private.kafka_topic in topics and len(topics[private.kafka_topic].partitions) == 6
    finally:
        down = stack_cli("down")
    assert down.returncode == 0
    for name, pid in pids.items():
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, name
    after = stack_cli("status")
    assert after.returncode == 1 and after.stdout.count("DOWN") == 3
    # The second stack's keys were not written over the main stack's in .env.
    assert env_file.read_bytes() == env_file_before


def test_objects_derived_images_and_documents_survive_down_and_up(stack, tmp_path):
    from imgpipe import s3
    from tests.helpers import all_documents, encode, gradient_pattern, run_script, upload

    private, stack_cli = private_stack(stack, tmp_path / "state")
    try:
        assert (up := stack_cli("up")).returncode == 0, up.stdout + up.stderr
        keys = upload(private, {f"keep-{i}.jpg": encode(gradient_pattern(120, 90, seed=i), ".jpg") for i in range(3)})
        assert run_script("producer/image_producer.py", ["--no-progress"], private).returncode == 0
        consumed = run_script("consumer/image_consumer.py", ["--max-idle-seconds", "4", "--no-progress"], private)
        assert "indexed 3, dead-lettered 0" in consumed.stderr, consumed.stderr
        docs = all_documents(private)
        wanted = sorted(keys + [d[k] for d in docs for k in ("thumbnail_key", "grayscale_key")])

        def objects() -> dict[str, bytes]:
            client = s3.client(private)
            return {o["Key"]: s3.fetch(client, private.s3_bucket, o["Key"]).data
                    for o in s3.list_objects(client, private.s3_bucket)}

        before = objects()
        assert sorted(before) == wanted
        assert (down := stack_cli("down")).returncode == 0, down.stderr
        assert (up := stack_cli("up")).returncode == 0, up.stdout + up.stderr
        assert objects() == before  # every key, byte for byte: raw images and derived ones
        assert sorted(d["key"] for d in all_documents(private)) == sorted(keys)
        # The bucket is a folder of the state directory, each object a file.
        assert (tmp_path / "state" / "s3" / private.s3_bucket / keys[0]).is_file()
    finally:
        stack_cli("down")


def test_a_service_configured_elsewhere_is_left_alone(tmp_path):
    from stack.services import MeiliSearch

    remote = settings_from_mapping({"MEILI_URL": "http://search.example.invalid:7700",
                                    "MEILI_MASTER_KEY": "k" * 24, "LOCAL_STATE_DIR": str(tmp_path)})
    service = MeiliSearch(remote)
    assert not service.is_local
    status = service.start()
    assert (status.managed, status.pid, status.healthy) == (False, None, False)
    assert not (tmp_path / "run").exists() and not (tmp_path / "bin").exists()  # nothing fetched or started
    assert service.stop() is False
