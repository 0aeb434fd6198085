"""Index documents in MeiliSearch, one request per batch, and wait until the task succeeded.

A 202 from MeiliSearch only means "enqueued": offsets may be committed only once the task
reports `succeeded`, or a crash in between would lose documents that Kafka thinks are done.

A batch whose task fails is split in halves, and again, until the documents at fault are found:
only they are dead-lettered, the rest is indexed. MeiliSearch's error code alone cannot be
trusted to tell (it reports a `_vectors` of the wrong type as `internal`), so a document that
fails alone is dead-lettered only if MeiliSearch still indexes others: a document of this batch,
or the last good document indexed again (harmless: same id, same content). A failure of
MeiliSearch itself (disk full, I/O error) is retried like an outage, never split.
A misconfiguration found at start-up (the index keyed by another field, an invalid index name,
a refused key) is the user's to fix: UserError, exit 2, instead of retrying forever.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from imgpipe import meili
from imgpipe.document import EMBEDDER_SETTINGS, INDEX_SETTINGS
from imgpipe.errors import DENIED, FAILED, NOT_FOUND, REJECTED, UserError
from imgpipe.retry import Stopped, retry_until_stopped
from imgpipe.settings import Settings

log = logging.getLogger(__name__)

# Task failures that say nothing about the documents: MeiliSearch itself is failing.
SERVICE_FAILURE_CODES = frozenset({"io_error", "no_space_left_on_device", "database_size_limit_reached",
                                   "too_many_open_files", "index_not_found", "task_not_found"})


EMBEDDER_RETRY_SECONDS = 60.0


@dataclass(frozen=True)
class Submitted:
    documents: list[dict]
    delete_ids: list[str]
    add_task: int | None
    delete_task: int | None


class DocumentsRefused(Exception):
    """MeiliSearch refused a batch because of (some of) its documents."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Indexer:
    def __init__(self, settings: Settings, stop: threading.Event):
        self.settings = settings
        self.stop = stop
        self.client = meili.client(settings)
        self.index = self.client.index(settings.meili_index)
        self._last_good: dict | None = None  # a document MeiliSearch indexed, to ask whether it still does
        self._embedder_ready = False
        self._embedder_tried_at = 0.0

    def _wait(self, task_uid: int, what: str) -> None:
        meili.wait_for_task(self.client, self.settings, task_uid, what, self.settings.meili_index)

    def ensure_index(self) -> None:
        """Create the index with `id` as primary key and apply the filterable/sortable settings.
        Raises UserError for what waiting cannot fix."""
        name = self.settings.meili_index

        def prepare() -> None:
            try:
                with meili.errors("looking up", self.settings, name):
                    current = self.index.fetch_info()
                if current.primary_key not in (None, "id"):
                    raise UserError(f"MeiliSearch index {name!r} (MEILI_INDEX) has primary key "
                                    f"{current.primary_key!r}, but the pipeline's documents are keyed by 'id': "
                                    "choose another MEILI_INDEX or delete that index")
            except meili.MeiliError as exc:
                if exc.kind != NOT_FOUND:
                    raise
                try:
                    with meili.errors("creating", self.settings, name):
                        task = self.client.create_index(name, {"primaryKey": "id"})
                except meili.MeiliError as denied:
                    if denied.kind != DENIED:
                        raise
                    # A least-privilege key (imgpipe/access.py) may not create indexes: set-up does.
                    raise UserError(f"MeiliSearch index {name!r} (MEILI_INDEX) does not exist and the consumer's "
                                    "key may not create it: run the set-up first (`make up` for the local stack, "
                                    "deploy/host/provision.py meili elsewhere)") from None
                self._wait(task.task_uid, "creating the index")
            self._wait(self.index.update_settings(INDEX_SETTINGS).task_uid, "updating the index settings")
            self._add_embedder()

        def attempt() -> None:
            try:
                with meili.errors("preparing index", self.settings, name):
                    prepare()
            except meili.MeiliError as exc:
                raise _misconfiguration(exc, self.settings) from None  # an outage stays a MeiliError: retried

        retry_until_stopped(attempt, self.stop)

    def _add_embedder(self) -> None:
        """The descriptor's embedder, as its own task: MeiliSearch refuses it on an index that
        already holds documents without `_vectors` (indexed before descriptors existed). Then
        similar search waits until those are processed again; indexing goes on regardless."""
        self._embedder_tried_at = time.monotonic()
        try:
            with meili.errors("adding the descriptor's embedder", self.settings, self.settings.meili_index):
                self._wait(self.index.update_settings(EMBEDDER_SETTINGS).task_uid, "adding the descriptor's embedder")
            self._embedder_ready = True
        except meili.MeiliError as exc:
            if exc.kind != FAILED:
                raise
            log.warning("index %s keeps no descriptors for similar search yet (%s: %s); it is tried again as "
                        "its images are processed again", self.settings.meili_index, exc.code, exc.message)

    def add(self, documents: list[dict]) -> dict[int, str]:
        """Index a batch and return once MeiliSearch has it (retried through outages). Returns the
        positions of the documents MeiliSearch refused, with why; every other one is indexed."""
        return self.confirm(self.submit(documents))

    def submit(self, documents: list[dict], delete_ids: list[str] = ()) -> "Submitted":
        """Enqueue a batch's documents and deletions (retried through outages) without waiting for
        the tasks: the consumer processes the next batch meanwhile, and confirms this one after."""

        def enqueue(operation, what: str) -> int:
            def attempt() -> int:
                with meili.errors(what, self.settings, self.settings.meili_index):
                    return operation().task_uid

            return retry_until_stopped(attempt, self.stop)

        # add_documents replaces the stored document: the fields an enrichment stage added to an
        # older version (faces, text) must not stay on a newer one. The announcement this index
        # task is followed by has the enrichers add them again for the version now indexed.
        add_task = (enqueue(lambda: self.index.add_documents(documents, primary_key="id"),
                            f"indexing {len(documents)} documents") if documents else None)
        delete_task = (enqueue(lambda: self.index.delete_documents(list(delete_ids)),
                               f"deleting {len(delete_ids)} documents") if delete_ids else None)
        return Submitted(list(documents), list(delete_ids), add_task, delete_task)

    def confirm(self, submitted: "Submitted", superseded: frozenset[str] = frozenset()) -> dict[int, str]:
        """Wait for a submitted batch's tasks. A failed add is redone by parts, splitting to find
        the documents at fault (those in `superseded`, replaced by a batch enqueued since, are left
        out: re-adding them now would put an older version over the newer one). Returns the
        positions of refused documents, with why."""
        refused: dict[int, str] = {}
        self._indexed_some = False
        if submitted.add_task is not None and not self._succeeded(submitted.add_task, "indexing documents"):
            positions = [i for i, doc in enumerate(submitted.documents) if doc["id"] not in superseded]
            self._add_part(submitted.documents, positions, refused)
        elif submitted.documents:
            self._indexed_some = True
            self._last_good = submitted.documents[-1]
        if submitted.delete_task is not None and not self._succeeded(submitted.delete_task, "deleting documents"):
            ids = [i for i in submitted.delete_ids if i not in superseded]

            def delete_again() -> None:
                with meili.errors("deleting documents", self.settings, self.settings.meili_index):
                    self._wait(self.index.delete_documents(ids).task_uid, f"deleting {len(ids)} documents")

            if ids:
                retry_until_stopped(delete_again, self.stop)  # nothing about a deletion is the message's fault
        if not self._embedder_ready and time.monotonic() - self._embedder_tried_at > EMBEDDER_RETRY_SECONDS:
            try:
                self._add_embedder()  # succeeds once every old document was indexed again with a descriptor
            except meili.MeiliError as exc:
                log.warning("could not add the descriptor's embedder (%s); trying again later", exc)
        return refused

    def settled(self, submitted: "Submitted") -> bool:
        """Have the batch's tasks finished (either way)? One quick request; False on any doubt."""
        for uid in (submitted.add_task, submitted.delete_task):
            if uid is None:
                continue
            try:
                with meili.errors("looking up a task", self.settings, self.settings.meili_index):
                    if self.client.get_task(uid).status not in ("succeeded", "failed", "canceled"):
                        return False
            except meili.MeiliError:
                return False
        return True

    def _succeeded(self, task_uid: int, what: str) -> bool:
        """Wait for the task through outages; False when it failed (for whatever reason)."""

        def wait() -> None:
            self._wait(task_uid, what)

        try:
            retry_until_stopped(wait, self.stop, only_transient=True)
            return True
        except meili.MeiliError as exc:
            if exc.kind == FAILED or exc.code == "task_not_found":
                log.info("task %d (%s) %s: %s", task_uid, what, exc.code, exc.message)
                return False
            raise

    def _add_now(self, part: list[dict]) -> None:
        """One request and its task; DocumentsRefused when the documents may be at fault."""

        def add_and_wait() -> None:
            try:
                with meili.errors(f"indexing {len(part)} documents", self.settings, self.settings.meili_index):
                    task = self.index.add_documents(part, primary_key="id")
                self._wait(task.task_uid, f"indexing {len(part)} documents")
            except meili.MeiliError as exc:
                if _about_the_documents(exc):
                    raise DocumentsRefused(exc.code, exc.message) from None
                raise

        retry_until_stopped(add_and_wait, self.stop)

    def _add_part(self, documents: list[dict], positions: list[int], refused: dict[int, str]) -> None:
        part = [documents[i] for i in positions]
        while True:
            try:
                self._add_now(part)
                self._indexed_some = True
                self._last_good = part[-1]
                return
            except DocumentsRefused as exc:
                if len(positions) > 1:
                    log.info("MeiliSearch refused a batch of %d (%s); splitting it to find the documents at fault",
                             len(positions), exc.code)
                    middle = len(positions) // 2
                    self._add_part(documents, positions[:middle], refused)
                    self._add_part(documents, positions[middle:], refused)
                    return
                if self._still_indexes():
                    refused[positions[0]] = f"MeiliSearch refused the document ({exc.code}: {exc.message})"
                    return
                log.warning("MeiliSearch refuses even a document it indexed before (%s); waiting for it to recover",
                            exc.code)
                if self.stop.wait(5.0):
                    raise Stopped("stop requested while MeiliSearch was failing") from None

    def _still_indexes(self) -> bool:
        """Does MeiliSearch index documents at all right now? Yes if some of this batch went in;
        else ask it to index the last good document again."""
        if self._indexed_some or self._last_good is None:
            return True
        try:
            self._add_now([self._last_good])
            return True
        except DocumentsRefused:
            return False


def _about_the_documents(exc: meili.MeiliError) -> bool:
    """A failed task or a refused request that the documents themselves caused."""
    if exc.kind == FAILED:
        return exc.code not in SERVICE_FAILURE_CODES
    # The request was refused before a task existed: a payload too large or unreadable.
    return exc.kind == REJECTED and exc.code in ("payload_too_large", "malformed_payload", "invalid_document_id",
                                                 "missing_document_id", "bad_request")


def _misconfiguration(exc: meili.MeiliError, settings: Settings) -> Exception:
    if exc.kind == DENIED:
        return UserError(f"MeiliSearch at {settings.meili_url} refused the indexing key (MEILI_ADMIN_KEY, else "
                         f"MEILI_MASTER_KEY): {exc.message}")
    if exc.kind in (REJECTED, FAILED) and exc.code not in SERVICE_FAILURE_CODES:
        return UserError(f"MeiliSearch refused index {settings.meili_index!r} (MEILI_INDEX): {exc.code}: "
                         f"{exc.message}")
    return exc
