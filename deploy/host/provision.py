"""One-time set-up, run by the AWS host's deploy/host/setup.sh (as root) and by docker compose's
`meili-setup` service (idempotent).

`meili`: with the master key (from the environment, never argv), create the index with its
settings and two keys limited to that index (imgpipe/access.py says what each may do): the
consumer's (write documents, read tasks and settings) and the readers' (search and read
documents: visualize/, export_csv.py). Each key goes into an env file only its users can read.
The master key is not written anywhere else, and no service gets it.
`topics`: create the Kafka topics (the producer refuses to start without them).

    MEILI_MASTER_KEY=... python deploy/host/provision.py meili --consumer-env /etc/imgpipe/consumer.env \
        --consumer-owner imgpipe-consumer --reader-env /etc/imgpipe/reader.env --reader-group imgpipe-readers
    python deploy/host/provision.py topics
"""
from __future__ import annotations

import argparse
import grp
import os
import pwd
import sys
from pathlib import Path

from imgpipe import access, cli
from imgpipe.errors import UserError
from imgpipe.settings import load_settings

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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging()

    def body() -> int:
        settings = load_settings()
        if args.command == "topics":
            from imgpipe import kafka

            kafka.ensure_topics(settings, [settings.kafka_topic, settings.kafka_dead_letter_topic])
            print(f"topics {settings.kafka_topic}, {settings.kafka_dead_letter_topic} ready")
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
