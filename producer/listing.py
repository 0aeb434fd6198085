"""Which S3 objects to announce: single keys, a listing that survives outages, and the --watch
state file (the S3 calls themselves are imgpipe.s3's)."""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator

from imgpipe import s3
from imgpipe.retry import retry_until_stopped

log = logging.getLogger(__name__)


def head_objects(client, bucket: str, keys: Iterable[str]) -> Iterator[dict | str]:
    """ListObjects-shaped entries for the given keys; a key that does not exist yields an error text."""
    for key in keys:
        found = s3.head(client, bucket, key)
        yield found if found is not None else f"s3://{bucket}/{key} does not exist"


def list_retrying(client, bucket: str, prefix: str, stop: threading.Event) -> Iterator[dict]:
    """Every object under the prefix, page by page; a page that fails on an outage is retried
    with backoff (imgpipe.retry) from the last key seen, so a pass survives an S3 outage in the
    middle. A stop during the outage raises imgpipe.retry.Stopped; a missing bucket or refused
    credentials are raised at once."""
    last = ""
    while True:
        objects, more = retry_until_stopped(lambda: s3.list_page(client, bucket, prefix, start_after=last), stop,
                                            only_transient=True)
        yield from objects
        if not more:
            return
        last = objects[-1]["Key"]


class SentState:
    """Key -> ETag of what --watch already delivered, so a restart does not resend everything,
    and so a key that disappears from a full listing can be announced as deleted.

    Written atomically after every pass (temporary file, fsync, rename): a crash leaves the old
    file or the new one, never half of one. A file that cannot be read anyway (truncated by a
    full disk, edited by hand) is set aside as `<name>.corrupt-<time>` and the watch starts over:
    resending is harmless (the consumer is idempotent), stopping the watch is not.
    """

    def __init__(self, path: Path):
        self.path = path
        self.sent: dict[str, str] = {}
        if path.is_file():
            try:
                loaded = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(loaded, dict) or not all(isinstance(v, str) for v in loaded.values()):
                    raise ValueError("not a JSON object of key -> ETag")
                self.sent = loaded
            except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
                os.replace(path, aside)
                log.warning("the state file %s is unreadable (%s); set it aside as %s and starting over: "
                            "every object is sent again", path, " ".join(str(exc).split())[:200], aside.name)

    def is_new(self, obj: dict) -> bool:
        return self.sent.get(obj["Key"]) != str(obj.get("ETag", "")).strip('"')

    def known_keys(self) -> set[str]:
        return set(self.sent)

    def mark(self, key: str, etag: str) -> None:
        self.sent[key] = etag.strip('"')

    def forget(self, key: str) -> None:
        self.sent.pop(key, None)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as out:
            json.dump(self.sent, out, ensure_ascii=False)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        # The rename itself is durable only once the directory is on disk too.
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
