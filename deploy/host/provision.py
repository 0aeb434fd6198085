"""One-time set-up, run by the AWS host's deploy/host/setup.sh (as root) and by docker compose's
`meili-setup` service (idempotent).

`meili`: with the master key (from the environment, never argv), create the index with its
settings and two keys limited to that index (imgpipe/access.py says what each may do): the
consumer's (write documents, read tasks and settings) and the readers' (search and read
documents: visualize/, export_csv.py). Each key goes into an env file only its users can read.
The master key is not written anywhere else, and no service gets it.
`topics`: create the Kafka topics (the producer refuses to start without them), and grow the
events topic to KAFKA_TOPIC_PARTITIONS partitions when it has fewer (a larger fleet).
`kafka-config`: render the broker's server.properties from stack/kafka/server.properties.template;
with --tls-dir its SASL listener is SASL_SSL on the private address (the fleet's way in).
`fleet-secret` (main host, with a fleet): create the fleet's SCRAM user over the loopback listener
and put user, password, the Kafka CA and the consumer's MeiliSearch key into the fleet's secret.
`fleet-join` (a fleet host): read that secret (waiting until the main host has filled it) and write
the consumer's env file (its MeiliSearch key and KAFKA_CLIENT_CONFIG) and the CA file.

    MEILI_MASTER_KEY=... python deploy/host/provision.py meili --consumer-env /etc/imgpipe/consumer.env \
        --consumer-owner imgpipe-consumer --reader-env /etc/imgpipe/reader.env --reader-group imgpipe-readers
    python deploy/host/provision.py topics
    python deploy/host/provision.py kafka-config --out /etc/imgpipe/kafka/server.properties \
        --sasl-address 10.80.0.12 --tls-dir /etc/imgpipe/kafka/tls --partitions 24
    python deploy/host/provision.py fleet-join --secret-id ARN --main-host 10.80.0.12 \
        --consumer-env /etc/imgpipe/consumer.env --consumer-owner imgpipe-consumer
"""
from __future__ import annotations

import argparse
import grp
import json
import os
import pwd
import secrets
import string
import sys
import time
from pathlib import Path

from imgpipe import access, cli
from imgpipe.errors import UserError
from imgpipe.settings import load_settings

REPO = Path(__file__).resolve().parent.parent.parent
# The fleet's Kafka user (SCRAM-SHA-512) and where a fleet host keeps the broker's CA.
FLEET_KAFKA_USER = "imgpipe-fleet"
FLEET_CA_FILE = Path("/etc/imgpipe/kafka-ca.pem")
# The host's ports: 9092 PLAINTEXT on 127.0.0.1, 9093 the KRaft controller, 9094 the SASL listener.
KAFKA_PORT, KAFKA_CONTROLLER_PORT, KAFKA_SASL_PORT = 9092, 9093, 9094

# What each key may do, on its one index (imgpipe/access.py explains why).
CONSUMER_ACTIONS = list(access.CONSUMER_ACTIONS)
READER_ACTIONS = list(access.READER_ACTIONS)


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("deploy/host/provision.py", __doc__.split("\n\n")[0], [
        "MEILI_MASTER_KEY=... python deploy/host/provision.py meili --consumer-env c.env --reader-env r.env",
        "python deploy/host/provision.py topics"])
    sub = p.add_subparsers(dest="command", required=True)
    meili = sub.add_parser("meili", help="index, settings and the two limited keys")
    meili.add_argument("--consumer-env", type=Path, required=True, help="env file for the consumer's key (0600)")
    meili.add_argument("--consumer-owner", help="user that owns the consumer's env file")
    meili.add_argument("--reader-env", type=Path, required=True, help="env file for the readers' key (0640)")
    meili.add_argument("--reader-group", help="group that may read the readers' env file")
    meili.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for MeiliSearch")
    sub.add_parser("topics", help="create the Kafka topics")
    config = sub.add_parser("kafka-config", help="render the broker's server.properties")
    config.add_argument("--out", type=Path, required=True, help="where to write it (0640)")
    config.add_argument("--data-dir", default="/var/lib/kafka/data")
    config.add_argument("--partitions", type=int, default=6, help="default partitions of new topics")
    config.add_argument("--port", type=int, default=KAFKA_PORT, help="PLAINTEXT listener on 127.0.0.1")
    config.add_argument("--controller-port", type=int, default=KAFKA_CONTROLLER_PORT)
    config.add_argument("--sasl-address", default="127.0.0.1", help="address of the SCRAM-SHA-512 listener")
    config.add_argument("--sasl-port", type=int, default=KAFKA_SASL_PORT)
    config.add_argument("--tls-dir", type=Path, help="deploy/host/kafka-tls.sh's folder: SASL_SSL (else SASL_PLAINTEXT)")
    config.add_argument("--group", help="group that may read the file (the broker's: kafka)")
    secret = sub.add_parser("fleet-secret", help="main host: the fleet's Kafka user, CA and MeiliSearch key")
    secret.add_argument("--secret-id", required=True, help="the stack's FleetSecret (ARN)")
    secret.add_argument("--ca", type=Path, required=True, help="the broker's CA (kafka-tls.sh's ca.pem)")
    join = sub.add_parser("fleet-join", help="fleet host: credentials from the fleet's secret into env files")
    join.add_argument("--secret-id", required=True, help="the stack's FleetSecret (ARN)")
    join.add_argument("--main-host", required=True, help="private address of the main host")
    join.add_argument("--consumer-env", type=Path, required=True, help="env file to write (0600)")
    join.add_argument("--consumer-owner", help="user that owns it")
    join.add_argument("--enricher-env", type=Path, help="the enricher's env file, when it runs (0600)")
    join.add_argument("--enricher-owner", help="user that owns it")
    join.add_argument("--ca-out", type=Path, default=FLEET_CA_FILE, help="where to write the broker's CA")
    join.add_argument("--wait-minutes", type=float, default=30.0, help="how long to wait for the main host")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging()

    def body() -> int:
        settings = load_settings()
        if args.command == "kafka-config":
            text = render_kafka_config(args.port, args.controller_port, args.data_dir, args.partitions,
                                       args.sasl_address, args.sasl_port, args.tls_dir)
            write_text(args.out, text, mode=0o640, group=args.group)
            print(f"{args.out}: SASL listener {args.sasl_address}:{args.sasl_port} "
                  f"({'SASL_SSL' if args.tls_dir else 'SASL_PLAINTEXT'}, SCRAM-SHA-512)")
            return cli.EXIT_OK
        if args.command == "fleet-secret":
            return fleet_secret(settings, args.secret_id, args.ca)
        if args.command == "fleet-join":
            return fleet_join(settings, args)
        if args.command == "topics":
            from imgpipe import kafka

            kafka.ensure_topics(settings, [settings.kafka_topic, settings.kafka_dead_letter_topic])
            # A larger fleet (KAFKA_TOPIC_PARTITIONS from setup.sh) needs more partitions than the
            # topic was made with: grow it, as kafka-topics.sh --alter --partitions would.
            had = kafka.ensure_partitions(settings, settings.kafka_topic, settings.kafka_topic_partitions)
            grown = f" (grown from {had} to {settings.kafka_topic_partitions} partitions)" if had else ""
            print(f"topics {settings.kafka_topic}, {settings.kafka_dead_letter_topic} ready{grown}")
            return cli.EXIT_OK
        if not settings.meili_master_key:
            raise UserError("MEILI_MASTER_KEY is not set (setup.sh reads it from /etc/imgpipe/meilisearch.env)")
        consumer_key, reader_key = provision_meili(settings, timeout=args.timeout)
        write_env(args.consumer_env, {access.ROLE_SETTING["consumer"]: consumer_key}, mode=0o600,
                  owner=args.consumer_owner)
        write_env(args.reader_env, {access.ROLE_SETTING["reader"]: reader_key}, mode=0o640, group=args.reader_group)
        print(f"index {settings.meili_index} ready; keys in {args.consumer_env} and {args.reader_env}")
        return cli.EXIT_OK

    return cli.run(body)


def provision_meili(settings, timeout: float = 120.0) -> tuple[str, str]:
    """Create the index and settings, and the two keys limited to MEILI_INDEX (once: found by
    name later); returns (consumer's key, readers' key)."""
    keys = access.set_up(settings, settings.meili_master_key, [settings.meili_index], timeout=timeout)
    return keys.consumer, keys.reader


def render_kafka_config(port: int, controller_port: int, data_dir: str, partitions: int, sasl_address: str,
                        sasl_port: int, tls_dir: Path | None) -> str:
    """The local stack's broker config with the host's values; with `tls_dir` the SASL listener is
    SASL_SSL with kafka-tls.sh's PKCS#12 key store (the file is 0640 root:kafka: it holds the password)."""
    tls = ""
    if tls_dir is not None:
        password = (tls_dir / "broker.p12.password").read_text().strip()
        tls = "\n".join([
            "listener.name.sasl.ssl.keystore.type=PKCS12",
            f"listener.name.sasl.ssl.keystore.location={tls_dir / 'broker.p12'}",
            f"listener.name.sasl.ssl.keystore.password={password}",
            f"listener.name.sasl.ssl.key.password={password}",
            "listener.name.sasl.ssl.enabled.protocols=TLSv1.3,TLSv1.2"])
    template = string.Template((REPO / "stack" / "kafka" / "server.properties.template").read_text())
    return template.substitute(port=port, controller_port=controller_port, data_dir=data_dir, partitions=partitions,
                               sasl_address=sasl_address, sasl_port=sasl_port,
                               sasl_protocol="SASL_SSL" if tls_dir is not None else "SASL_PLAINTEXT", sasl_tls=tls)


def fleet_secret(settings, secret_id: str, ca: Path) -> int:
    """Keep the fleet's password across runs (from the secret when it has one), make sure the
    broker has the user, and (re)write the secret."""
    from imgpipe import aws, kafka

    if not settings.meili_admin_key:
        raise UserError("MEILI_ADMIN_KEY (the consumer's key) is not set: run `provision.py meili` first")
    client = aws.Session(region=settings.aws_region).client("secretsmanager")
    try:
        previous = json.loads(aws.secret_string(client, secret_id))
    except (aws.AwsError, ValueError):
        previous = {}
    password = previous.get("kafka_password") or secrets.token_urlsafe(32)
    kafka.ensure_scram_user(settings, FLEET_KAFKA_USER, password)
    aws.put_secret_string(client, secret_id, json.dumps({
        "kafka_username": FLEET_KAFKA_USER, "kafka_password": password, "kafka_ca_pem": ca.read_text(),
        "meili_consumer_key": settings.meili_admin_key}))
    print(f"fleet secret {secret_id}: Kafka user {FLEET_KAFKA_USER}, CA and the consumer's MeiliSearch key")
    return cli.EXIT_OK


def fleet_join(settings, args) -> int:
    from imgpipe import aws, kafka

    client = aws.Session(region=settings.aws_region).client("secretsmanager")
    deadline = time.monotonic() + args.wait_minutes * 60
    while True:
        try:
            value = json.loads(aws.secret_string(client, args.secret_id))
            if {"kafka_username", "kafka_password", "kafka_ca_pem", "meili_consumer_key"} <= set(value):
                break
        except (aws.AwsError, ValueError):
            pass  # the main host has not put it yet (a secret without a value is NOT_FOUND)
        if time.monotonic() > deadline:
            raise UserError(f"the fleet secret {args.secret_id} is still empty after {args.wait_minutes:.0f} min: "
                            "is the main host's set-up done? (/var/log/imgpipe-setup.log there)")
        print("waiting for the main host to fill the fleet secret", flush=True)
        time.sleep(20)
    write_text(args.ca_out, value["kafka_ca_pem"], mode=0o644)
    client_config = kafka.sasl_client_config(value["kafka_username"], value["kafka_password"], tls=True,
                                             ca_location=str(args.ca_out))
    env = {access.ROLE_SETTING["consumer"]: value["meili_consumer_key"],
           # Single quotes: systemd's EnvironmentFile (and bash) keep the JSON's double quotes inside.
           "KAFKA_CLIENT_CONFIG": "'" + json.dumps(client_config, separators=(",", ":")) + "'"}
    write_env(args.consumer_env, env, mode=0o600, owner=args.consumer_owner)
    if args.enricher_env:
        write_env(args.enricher_env, env, mode=0o600, owner=args.enricher_owner)
    print(f"joined: Kafka {args.main_host}:{KAFKA_SASL_PORT} as {value['kafka_username']} (SASL_SSL), "
          f"MeiliSearch http://{args.main_host}:7700; credentials in {args.consumer_env}")
    return cli.EXIT_OK


def write_text(path: Path, text: str, mode: int, group: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        if group:
            os.fchown(fd, -1, grp.getgrnam(group).gr_gid)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_env(path: Path, values: dict[str, str], mode: int, owner: str | None = None,
              group: str | None = None) -> None:
    """Write KEY=value lines with `mode` from the first byte (no moment where others can read it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        uid = pwd.getpwnam(owner).pw_uid if owner else -1
        gid = grp.getgrnam(group).gr_gid if group else -1
        os.fchown(fd, uid, gid)
        os.write(fd, "".join(f"{k}={v}\n" for k, v in values.items()).encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
