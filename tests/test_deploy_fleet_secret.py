"""How a fleet host gets its credentials: the main host's `provision.py fleet-secret` creates the
fleet's SCRAM user on the real local broker and puts user, password, CA and the consumer's
MeiliSearch key into the stack's secret (moto's Secrets Manager: AWS's control plane only);
a fleet host's `provision.py fleet-join` reads it into an env file that systemd and bash read
back as the same JSON, and whose login the broker's SASL listener accepts."""
from __future__ import annotations

import json
import subprocess

import boto3
import pytest

from deploy.host import provision
from imgpipe import kafka
from stack.services import Kafka

pytestmark = [pytest.mark.integration]


@pytest.fixture
def secret(stack, monkeypatch, tmp_path):
    from moto import mock_aws

    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("MEILI_ADMIN_KEY", stack.meili_admin_key)
    with mock_aws():
        client = boto3.client("secretsmanager", region_name="us-east-1")
        # As the template makes it: no value until the main host puts one.
        arn = client.create_secret(Name="imgpipe-fleet", Description="fleet")["ARN"]
        yield client, arn


def read_env_file(path) -> dict[str, str]:
    """The env file as bash (and so imgpipe-run) reads it."""
    script = f"set -a; . {path}; set +a; python3 -c 'import json, os; print(json.dumps(dict(os.environ)))'"
    return json.loads(subprocess.run(["bash", "-c", script], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"},
                                     check=True).stdout)


def test_the_main_host_fills_the_secret_and_a_fleet_host_joins_with_it(stack, secret, tmp_path, capsys):
    client, arn = secret
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----\n")
    assert provision.main(["fleet-secret", "--secret-id", arn, "--ca", str(ca)]) == 0
    value = json.loads(client.get_secret_value(SecretId=arn)["SecretString"])
    assert value["kafka_username"] == provision.FLEET_KAFKA_USER and value["kafka_ca_pem"] == ca.read_text()
    assert value["meili_consumer_key"] == stack.meili_admin_key != stack.meili_master_key
    # A second run (setup.sh again) keeps the password the fleet already has.
    assert provision.main(["fleet-secret", "--secret-id", arn, "--ca", str(ca)]) == 0
    assert json.loads(client.get_secret_value(SecretId=arn)["SecretString"])["kafka_password"] == value["kafka_password"]

    env_file, ca_out = tmp_path / "consumer.env", tmp_path / "kafka-ca.pem"
    assert provision.main(["fleet-join", "--secret-id", arn, "--main-host", "10.80.0.12", "--consumer-env",
                           str(env_file), "--ca-out", str(ca_out)]) == 0
    out = capsys.readouterr().out
    assert value["kafka_password"] not in out and value["meili_consumer_key"] not in out
    assert oct(env_file.stat().st_mode & 0o777) == "0o600" and ca_out.read_text() == ca.read_text()
    env = read_env_file(env_file)
    assert env["MEILI_ADMIN_KEY"] == stack.meili_admin_key and "MEILI_MASTER_KEY" not in env
    config = json.loads(env["KAFKA_CLIENT_CONFIG"])
    assert config == {"security.protocol": "SASL_SSL", "sasl.mechanisms": "SCRAM-SHA-512",
                      "sasl.username": provision.FLEET_KAFKA_USER, "sasl.password": value["kafka_password"],
                      "ssl.ca.location": str(ca_out)}
    # The login is real: the broker's SASL listener (plain on the local stack) accepts it.
    local = stack.with_overrides(kafka_bootstrap_servers=Kafka(stack).sasl_settings().kafka_bootstrap_servers,
                                 kafka_client_config={**config, "security.protocol": "SASL_PLAINTEXT"})
    assert stack.kafka_topic in kafka.list_topics(local, timeout=15).topics


def test_a_fleet_host_whose_secret_stays_empty_says_what_to_check(secret, tmp_path, capsys):
    _, arn = secret
    code = provision.main(["fleet-join", "--secret-id", arn, "--main-host", "10.80.0.12", "--consumer-env",
                           str(tmp_path / "consumer.env"), "--wait-minutes", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "is still empty" in err and "/var/log/imgpipe-setup.log" in err
    assert not (tmp_path / "consumer.env").exists()


def test_topics_grows_the_events_topic_to_the_fleets_partitions_and_never_shrinks_it(settings, monkeypatch, capsys):
    """provision.py topics, as setup.sh runs it after ConsumerHostsMax was raised: the topic the
    settings fixture made with 3 partitions gets KAFKA_TOPIC_PARTITIONS, a second run changes nothing."""
    from imgpipe.settings import to_env

    for name, value in to_env(settings.with_overrides(kafka_topic_partitions=5)).items():
        monkeypatch.setenv(name, value)
    assert provision.main(["topics"]) == 0
    assert "(grown from 3 to 5 partitions)" in capsys.readouterr().out
    assert len(kafka.list_topics(settings, topic=settings.kafka_topic).topics[settings.kafka_topic].partitions) == 5
    assert provision.main(["topics"]) == 0 and "grown" not in capsys.readouterr().out
    assert kafka.ensure_partitions(settings, settings.kafka_topic, 2) is None  # never fewer
