"""`python -m stack up|status|down` on a second, private stack: idempotent up, honest status,
and down leaves no process behind."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import psutil
import pytest

from imgpipe.settings import REPO_ROOT, settings_from_mapping, to_env
from stack.services import all_services

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def free_port_block() -> int:
    """A base port p with p, p+1 (Kafka controller), p+2 and p+3 all free."""
    for base in range(29100, 29900, 10):
        sockets = []
        try:
            for offset in range(4):
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


def test_up_is_idempotent_and_down_leaves_nothing_running(stack, tmp_path):
    base = free_port_block()
    private = settings_from_mapping({
        **to_env(stack),
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{base}", "MEILI_URL": f"http://127.0.0.1:{base + 2}",
        "S3_ENDPOINT_URL": f"http://127.0.0.1:{base + 3}", "LOCAL_STATE_DIR": str(tmp_path / "state"),
        "MEILI_ADMIN_KEY": "", "MEILI_SEARCH_KEY": ""})
    # Reuse the session's MeiliSearch binary instead of fetching it again.
    meili_binary = str(stack.local_state_dir / "bin" / "meilisearch")
    env = {**os.environ, **to_env(private), "MEILI_BINARY": meili_binary}

    env_file = REPO_ROOT / ".env"
    env_file_before = env_file.read_bytes()

    def stack_cli(command: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "stack", command], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=300)

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
