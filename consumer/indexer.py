"""Index documents in MeiliSearch, one request per batch, and wait until the task succeeded.

A 202 from MeiliSearch only means "enqueued": offsets may be committed only once the task
reports `succeeded`, or a crash in between would lose documents that Kafka thinks are done.
"""
from __future__ import annotations

import logging
import threading

from imgpipe import meili
from imgpipe.document import INDEX_SETTINGS
from imgpipe.errors import NOT_FOUND
from imgpipe.retry import retry_until_stopped
from imgpipe.settings import Settings

log = logging.getLogger(__name__)


class Indexer:
    def __init__(self, settings: Settings, stop: threading.Event):
        self.settings = settings
        self.stop = stop
        self.client = meili.client(settings)
        self.index = self.client.index(settings.meili_index)

    def _wait(self, task_uid: int, what: str) -> None:
        meili.wait_for_task(self.client, self.settings, task_uid, what, self.settings.meili_index)

    def _retried(self, operation, what: str):
        """Run `operation` until it works: every MeiliError is retried like an outage, a refused
        key included (retrying will not help until the operator fixes it, but dropping the batch
        would lose it; the retry log says why)."""

        def attempt():
            with meili.errors(what, self.settings, self.settings.meili_index):
                return operation()

        return retry_until_stopped(attempt, self.stop)

    def ensure_index(self) -> None:
        """Create the index with `id` as primary key and apply the filterable/sortable settings."""
        name = self.settings.meili_index

        def apply() -> None:
            try:
                with meili.errors("looking up", self.settings, name):
                    current = self.index.fetch_info()
                if current.primary_key not in (None, "id"):
                    log.warning("index %s has primary key %r, expected 'id'", name, current.primary_key)
            except meili.MeiliError as exc:
                if exc.kind != NOT_FOUND:
                    raise
                self._wait(self.client.create_index(name, {"primaryKey": "id"}).task_uid, "creating the index")
            self._wait(self.index.update_settings(INDEX_SETTINGS).task_uid, "updating the index settings")

        self._retried(apply, "preparing index")

    def add(self, documents: list[dict]) -> None:
        """Index a batch and return once MeiliSearch has it (retried through outages)."""

        def add_and_wait() -> None:
            task = self.index.add_documents(documents, primary_key="id")
            self._wait(task.task_uid, f"indexing {len(documents)} documents")

        self._retried(add_and_wait, f"indexing {len(documents)} documents")
