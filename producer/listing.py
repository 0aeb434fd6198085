"""Which S3 objects to announce: single keys, and the --watch state file (listing is imgpipe.s3's)."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable, Iterator

from imgpipe import s3
from imgpipe.errors import UserError

log = logging.getLogger(__name__)


def head_objects(client, bucket: str, keys: Iterable[str]) -> Iterator[dict | str]:
    """ListObjects-shaped entries for the given keys; a key that does not exist yields an error text."""
    for key in keys:
        found = s3.head(client, bucket, key)
        yield found if found is not None else f"s3://{bucket}/{key} does not exist"


class SentState:
    """Key -> ETag of what --watch already delivered, so a restart does not resend everything.

    Written atomically after every delivered pass; resending is harmless (the consumer is
    idempotent), missing an object is not, so only delivered keys are recorded.
    """

    def __init__(self, path: Path):
        self.path = path
        self.sent: dict[str, str] = {}
        if path.is_file():
            try:
                self.sent = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise UserError(f"cannot read the state file {path}: {exc}; delete it to start over") from None

    def is_new(self, obj: dict) -> bool:
        return self.sent.get(obj["Key"]) != str(obj.get("ETag", "")).strip('"')

    def forget_all_but(self, keys: set[str]) -> None:
        self.sent = {k: v for k, v in self.sent.items() if k in keys}

    def mark(self, key: str, etag: str) -> None:
        self.sent[key] = etag.strip('"')

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.sent, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, self.path)
