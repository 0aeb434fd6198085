"""Index documents in MeiliSearch, one request per batch, and wait until the task succeeded.

A 202 from MeiliSearch only means "enqueued": offsets may be committed only once the task
reports `succeeded`, or a crash in between would lose documents that Kafka thinks are done.
"""
from __future__ import annotations

import logging
import threading

from meilisearch.errors import MeilisearchApiError, MeilisearchCommunicationError, MeilisearchTimeoutError

from imgpipe.clients import meili_client
from imgpipe.document import INDEX_SETTINGS
from imgpipe.errors import InfrastructureError
from imgpipe.retry import retry_until_stopped
from imgpipe.settings import Settings

log = logging.getLogger(__name__)

TASK_TIMEOUT_MS = 120_000


class Indexer:
    def __init__(self, settings: Settings, stop: threading.Event):
        self.settings = settings
        self.stop = stop
        self.client = meili_client(settings)
        self.index = self.client.index(settings.meili_index)

    def _wait(self, task_uid: int, what: str) -> None:
        task = self.client.wait_for_task(task_uid, timeout_in_ms=TASK_TIMEOUT_MS, interval_in_ms=20)
        if task.status != "succeeded":
            error = task.error or {}
            raise InfrastructureError("meilisearch", f"{what} task {task_uid} {task.status}: "
                                      f"{error.get('code', '')} {error.get('message', '')}".strip())

    def _guard(self, operation, what: str):
        def attempt():
            try:
                return operation()
            except (MeilisearchCommunicationError, MeilisearchTimeoutError) as exc:
                raise InfrastructureError("meilisearch", f"{what}: {self.settings.meili_url} unreachable "
                                          f"({type(exc).__name__})") from None
            except MeilisearchApiError as exc:
                if exc.status_code in (401, 403):
                    # Wrong key: retrying will not help until the operator fixes it, but dropping
                    # the batch would lose it, so it is retried like an outage (and logged).
                    raise InfrastructureError("meilisearch", f"{what}: key refused ({exc.code})") from None
                raise InfrastructureError("meilisearch", f"{what}: {exc.code} {exc.message}") from None

        return retry_until_stopped(attempt, self.stop)

    def ensure_index(self) -> None:
        """Create the index with `id` as primary key and apply the filterable/sortable settings."""

        def apply() -> None:
            try:
                current = self.index.fetch_info()
                if current.primary_key not in (None, "id"):
                    log.warning("index %s has primary key %r, expected 'id'", self.settings.meili_index,
                                current.primary_key)
            except MeilisearchApiError as exc:
                if exc.code != "index_not_found":
                    raise
                self._wait(self.client.create_index(self.settings.meili_index, {"primaryKey": "id"}).task_uid,
                           "create index")
            self._wait(self.index.update_settings(INDEX_SETTINGS).task_uid, "update settings")

        self._guard(apply, f"preparing index {self.settings.meili_index}")

    def add(self, documents: list[dict]) -> None:
        """Index a batch and return once MeiliSearch has it (retried through outages)."""

        def add_and_wait() -> None:
            task = self.index.add_documents(documents, primary_key="id")
            self._wait(task.task_uid, f"indexing {len(documents)} documents:")

        self._guard(add_and_wait, f"indexing {len(documents)} documents")
