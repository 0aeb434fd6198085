"""The AWS host's SASL_SSL listener, on this machine: deploy/host/kafka-tls.sh makes the CA and the
broker's certificate, `provision.py kafka-config --tls-dir` renders the broker's config as setup.sh
does, and a scratch broker (the local stack's jars, its own ports and folder) runs it. A client
with the SCRAM user and the CA gets in, as a fleet host's consumer would (provision.py fleet-join's
KAFKA_CLIENT_CONFIG); one that trusts another CA, or does not speak TLS, does not.
Only the address differs from AWS: 127.0.0.1 here, the host's private address there.
"""
from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from deploy.host import provision
from imgpipe import kafka
from imgpipe.settings import REPO_ROOT
from stack.services import Kafka

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KAFKA_TLS = REPO_ROOT / "deploy/host/kafka-tls.sh"


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def make_tls(folder: Path, address: str = "127.0.0.1") -> Path:
    result = subprocess.run(["bash", str(KAFKA_TLS), str(folder), address], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return folder


class TlsBroker(Kafka):
    """The local stack's broker machinery with the AWS host's config and the session's jars."""

    def __init__(self, settings, tls_dir: Path, jars: Path):
        super().__init__(settings)
        self.tls_dir, self.jars = tls_dir, jars

    @property
    def libs(self) -> Path:
        return self.jars

    def install(self) -> None:
        pass

    def render_config(self) -> Path:
        config = self.dir / "server.properties"
        config.write_text(provision.render_kafka_config(
            self.host_port[1], self.controller_port, str(self.dir / "data"), 3, "127.0.0.1", self.sasl_port,
            self.tls_dir))
        return config


@pytest.fixture(scope="module")
def tls_broker(stack, tmp_path_factory):
    state = tmp_path_factory.mktemp("tls-broker")
    port, controller, sasl = free_ports(3)
    settings = stack.with_overrides(kafka_bootstrap_servers=f"127.0.0.1:{port}", local_state_dir=state)
    tls = make_tls(state / "tls")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KAFKA_CONTROLLER_PORT", str(controller))
        patch.setenv("KAFKA_SASL_PORT", str(sasl))
        broker = TlsBroker(settings, tls, Kafka(stack).libs)
        try:
            assert broker.start().healthy
            yield broker
        finally:
            broker.stop()


def test_kafka_tls_makes_a_ca_and_a_certificate_for_the_address_once(tmp_path):
    folder = make_tls(tmp_path / "tls", "10.80.0.12")
    text = subprocess.run(["openssl", "x509", "-in", str(folder / "broker.crt"), "-noout", "-text"],
                          capture_output=True, text=True).stdout
    assert "IP Address:10.80.0.12" in text and "TLS Web Server Authentication" in text
    for secret in ("ca.key", "broker.p12", "broker.p12.password"):
        assert oct((folder / secret).stat().st_mode & 0o777) == "0o600", secret
    before = (folder / "broker.p12").read_bytes(), (folder / "ca.pem").read_bytes()
    make_tls(folder, "10.80.0.12")
    assert ((folder / "broker.p12").read_bytes(), (folder / "ca.pem").read_bytes()) == before
    make_tls(folder, "10.80.0.13")  # a new address: a new certificate from the same CA
    assert (folder / "broker.p12").read_bytes() != before[0] and (folder / "ca.pem").read_bytes() == before[1]


def test_the_fleets_client_config_gets_in_over_sasl_ssl(tls_broker):
    username, password = tls_broker.sasl_user()
    config = kafka.sasl_client_config(username, password, tls=True,
                                      ca_location=str(tls_broker.tls_dir / "ca.pem"))
    assert json.loads(json.dumps(config))["security.protocol"] == "SASL_SSL"
    fleet = tls_broker.settings.with_overrides(kafka_bootstrap_servers=f"127.0.0.1:{tls_broker.sasl_port}",
                                               kafka_client_config=config)
    kafka.ensure_topics(tls_broker.settings, ["fleet-tls"], partitions=3)
    assert "fleet-tls" in kafka.list_topics(fleet, timeout=20).topics


def test_a_client_trusting_another_ca_or_without_tls_is_refused(tls_broker, tmp_path):
    username, password = tls_broker.sasl_user()
    other_ca = make_tls(tmp_path / "other") / "ca.pem"
    address = f"127.0.0.1:{tls_broker.sasl_port}"
    for config in (kafka.sasl_client_config(username, password, tls=True, ca_location=str(other_ca)),
                   kafka.sasl_client_config(username, password, tls=False),
                   kafka.sasl_client_config(username, "wrong", tls=True,
                                            ca_location=str(tls_broker.tls_dir / "ca.pem"))):
        refused = tls_broker.settings.with_overrides(kafka_bootstrap_servers=address, kafka_client_config=config)
        with pytest.raises(kafka.KafkaError):
            kafka.list_topics(refused, timeout=6)
