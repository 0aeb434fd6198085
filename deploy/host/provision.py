"""One-time set-up on the host, run as root by deploy/host/setup.sh (idempotent).

`meili`: with the master key (from the environment, never argv), create the index with its
settings and two keys limited to that index: the consumer's (write documents, read tasks and
settings) and the readers' (search and read documents: visualize/, export_csv.py). Each key
goes into an env file only its users can read. The master key is not written anywhere else,
and no service gets it.
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
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from imgpipe import cli
from imgpipe.document import INDEX_SETTINGS
from imgpipe.errors import InfrastructureError, UserError
from imgpipe.settings import load_settings

# What each key may do, on its one index. settings.update is there because consumer/indexer.py
# re-applies INDEX_SETTINGS at every start; it can go once the consumer compares them first.
CONSUMER_ACTIONS = ["documents.add", "documents.delete", "tasks.get", "indexes.get", "settings.get",
                    "settings.update"]
READER_ACTIONS = ["search", "documents.get"]


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
        consumer_key, reader_key = provision_meili(settings.meili_url, settings.meili_master_key,
                                                   settings.meili_index, timeout=args.timeout)
        write_env(args.consumer_env, {"MEILI_ADMIN_KEY": consumer_key}, mode=0o600, owner=args.consumer_owner)
        write_env(args.reader_env, {"MEILI_SEARCH_KEY": reader_key}, mode=0o640, group=args.reader_group)
        print(f"index {settings.meili_index} ready; keys in {args.consumer_env} and {args.reader_env}")
        return cli.EXIT_OK

    return cli.run(body)


def provision_meili(url: str, master_key: str, index: str, timeout: float = 120.0) -> tuple[str, str]:
    """Create the index and settings, and the two keys (once: found by name later); returns them."""
    import meilisearch
    from meilisearch.errors import MeilisearchApiError, MeilisearchCommunicationError

    client = meilisearch.Client(url, master_key, timeout=30)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.health()
            break
        except MeilisearchCommunicationError:
            if time.monotonic() > deadline:
                raise InfrastructureError("meilisearch", f"{url} did not answer within {timeout:.0f} s") from None
            time.sleep(1)

    def wait(task, what: str) -> None:
        done = client.wait_for_task(task.task_uid, timeout_in_ms=int(timeout * 1000))
        if done.status != "succeeded":
            raise InfrastructureError("meilisearch", f"{what}: {done.status} {done.error}")

    try:
        try:
            client.get_index(index)
        except MeilisearchApiError as exc:
            if exc.code != "index_not_found":
                raise
            wait(client.create_index(index, {"primaryKey": "id"}), f"creating index {index}")
        wait(client.index(index).update_settings(INDEX_SETTINGS), f"applying the settings of {index}")
        existing = {key.name: key for key in client.get_keys({"limit": 1000}).results}
        keys = []
        for name, actions in ((f"imgpipe consumer of {index}", CONSUMER_ACTIONS),
                              (f"imgpipe readers of {index}", READER_ACTIONS)):
            key = existing.get(name)
            if key is not None and (sorted(key.actions) != sorted(actions) or key.indexes != [index]):
                client.delete_key(key.uid)  # an older set-up gave it other rights: replace it
                key = None
            if key is None:
                key = client.create_key({"name": name, "description": "created by deploy/host/provision.py",
                                         "actions": actions, "indexes": [index], "expiresAt": None})
            keys.append(key.key)
    except MeilisearchApiError as exc:
        raise InfrastructureError("meilisearch", f"set-up of {index}: {exc.code} {exc.message}") from None
    return keys[0], keys[1]


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
