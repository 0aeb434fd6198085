"""MeiliSearch: the clients, the client library's errors said in the pipeline's terms, waiting for
tasks, and the one way the pipeline reads every document of an index.

A 202 from MeiliSearch only means "enqueued": `wait_for_task` returns once the task succeeded
and raises a MeiliError(kind FAILED) with the task's own error code otherwise.
"""
from __future__ import annotations

import json
import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from imgpipe.errors import DENIED, FAILED, NOT_FOUND, REJECTED, UNAVAILABLE, ServiceError, UserError
from imgpipe.settings import Settings

log = logging.getLogger(__name__)

TASK_TIMEOUT_MS = 120_000
# MeiliSearch's default pagination.maxTotalHits: no search may ask for more hits than this.
PAGE_SIZE = 1000


class MeiliError(ServiceError):
    """A failed MeiliSearch request or task: MeiliSearch's error `code` (index_not_found,
    invalid_search_filter, ...) and the `kind` it means."""

    def __init__(self, operation: str, url: str, index: str | None, code: str, message: str, kind: str,
                 status: int | None = None, summary: str | None = None):
        target = f"index {index!r}" if index else ""
        # The retry log and the one-line error say what to check, not a traceback's words.
        summary = summary or {"MeilisearchCommunicationError": f"cannot reach {url} (connection failed; is "
                                                               "MeiliSearch running? `make up` starts the local one)",
                              "MeilisearchTimeoutError": f"{url} did not answer in time ({operation})"}.get(code)
        super().__init__("meilisearch", operation, target, code, message, kind, status, summary=summary)
        self.url = url
        self.index = index


def client(settings: Settings, key: str | None = None, timeout: int = 30):
    """A client with the indexing key (admin where configured) unless `key` is given."""
    import meilisearch

    return meilisearch.Client(settings.meili_url, key if key is not None else settings.indexing_key,
                              timeout=timeout)


def search_client(settings: Settings, timeout: int = 30):
    """A client for reading: the search-only key where one is configured."""
    return client(settings, key=settings.reading_key, timeout=timeout)


_POSITION = re.compile(r"(\d+):(\d+) (.*)")


def one_line(message: str) -> str:
    """MeiliSearch's message on one line. The client appends a version hint to every search
    error, which only misleads; a filter error's second line is `start:end snippet`."""
    message = str(message).split(". Hint: It might not be working")[0].strip()
    first, _, rest = message.partition("\n")
    position = _POSITION.fullmatch(rest.strip())
    if position:
        return f"{first.strip()} (characters {position[1]}-{position[2]} of: {position[3]})"
    return " ".join(message.split())


def _kind(status: int | None, code: str) -> str:
    if status in (401, 403):
        return DENIED
    if code == "index_not_found":
        return NOT_FOUND
    if status is not None and 400 <= status < 500 and status not in (408, 429):
        return REJECTED
    return UNAVAILABLE


def translate(exc: BaseException, operation: str, settings: Settings, index: str | None = None) -> MeiliError:
    from meilisearch.errors import MeilisearchApiError

    if isinstance(exc, MeiliError):
        return exc
    if isinstance(exc, MeilisearchApiError):
        code = str(exc.code or "")
        return MeiliError(operation, settings.meili_url, index, code, one_line(exc.message),
                          _kind(exc.status_code, code), exc.status_code)
    return MeiliError(operation, settings.meili_url, index, type(exc).__name__, str(exc), UNAVAILABLE)


@contextmanager
def errors(operation: str, settings: Settings, index: str | None = None):
    """Raise what the block raises (the client's errors, or a connection dropped) as a MeiliError."""
    from meilisearch.errors import MeilisearchError

    try:
        yield
    except (MeilisearchError, OSError) as exc:
        raise translate(exc, operation, settings, index) from None


# How a reading script names a request MeiliSearch refused, by its code.
REQUEST_ERRORS = {"invalid_search_filter": "invalid filter", "invalid_search_sort": "invalid sort",
                  "invalid_search_limit": "invalid limit", "invalid_search_offset": "invalid offset",
                  "index_not_found": "no such index"}


def as_user_error(exc: MeiliError, key_setting: str = "MEILI_SEARCH_KEY") -> Exception:
    """The reading scripts' policy: a refused request or key is the user's to fix (one line,
    exit 2); anything else stays an outage (exit 1)."""
    if exc.code in REQUEST_ERRORS:
        return UserError(f"{REQUEST_ERRORS[exc.code]}: {exc.message}")
    if exc.kind == DENIED:
        return UserError(f"MeiliSearch at {exc.url} refused the key ({key_setting}): {exc.message}")
    return exc


def wait_for_task(meili_client, settings: Settings, task_uid: int, what: str, index: str | None = None,
                  timeout_ms: int = TASK_TIMEOUT_MS):
    """Wait until the task finished; return it if it succeeded, raise MeiliError otherwise."""
    with errors(f"waiting for task {task_uid} ({what})", settings, index):
        task = meili_client.wait_for_task(task_uid, timeout_in_ms=timeout_ms, interval_in_ms=20)
    if task.status != "succeeded":
        error = task.error or {}
        raise MeiliError(f"{what} (task {task_uid} {task.status})", settings.meili_url, index,
                         str(error.get("code", "")), str(error.get("message", "")), FAILED)
    return task


# --- searching and counting with the search-only key ---------------------------------------------

def search(settings: Settings, index: str, query: str = "", params: dict | None = None,
           operation: str = "searching") -> dict:
    """MeiliSearch's answer to one search of `index`, read with the search-only key."""
    with errors(operation, settings, index):
        return search_client(settings).index(index).search(query, dict(params or {}))


@dataclass(frozen=True)
class FacetCounts:
    """What a placeholder search with `limit: 0` says about the documents matching a filter:
    per facet, the exact number of documents holding each value (at most `maxValuesPerFacet`
    values per facet), and the min and max of the numeric facets. No document is read."""

    distribution: dict[str, dict[str, int]]
    stats: dict[str, dict[str, float]]

    def counts(self, facet: str) -> dict[str, int]:
        return dict(self.distribution.get(facet) or {})

    def total(self, facet: str) -> int:
        return sum(self.counts(facet).values())


def facet_counts(settings: Settings, index: str, facets: Iterable[str], filter_: str | None = None) -> FacetCounts:
    """Facet distribution and stats of `facets` (filterable attributes) over the documents
    matching `filter_`. A hit count would not do: MeiliSearch caps it at maxTotalHits (1000)."""
    params: dict = {"limit": 0, "facets": list(facets)}
    if filter_:
        params["filter"] = filter_
    response = search(settings, index, "", params, operation="counting documents of")
    return FacetCounts(response.get("facetDistribution") or {}, response.get("facetStats") or {})


# --- reading every document -----------------------------------------------------------------------

# Fields that are both sortable and filterable in INDEX_SETTINGS, most distinguishing first.
KEYSET_FIELDS = ("timestamp", "size_kb", "sharpness", "width", "height", "megapixels", "faces")
# Below every real value: `field >= LOWEST` holds for every document that has the field.
LOWEST = -9007199254740991


@dataclass
class DocumentReader:
    """Every document of an index, each once, read with the search-only key unless told otherwise.

    The documents API pages with offset/limit to the end, but needs a key with `documents.get`,
    which MeiliSearch's default search key lacks. Without one the reader either uses the
    indexing key (`fallback_to_indexing_key`, what the CSV export wants) or walks the index by
    search alone, which the search key may do: a placeholder search never reaches past
    `pagination.maxTotalHits` (1000), so the walk goes by keyset — sort by `timestamp`, take a
    page, then ask for `timestamp > last`, every query at offset 0. Documents sharing the boundary
    value (a bulk upload gives thousands the same second) are fetched as a group, split further
    on the next sortable field when the group itself fills a page.
    """

    settings: Settings
    index: str
    fields: list[str] | None = None
    fallback_to_indexing_key: bool = False
    key: str | None = None  # read with exactly this key (and the documents API) instead
    page_size: int = PAGE_SIZE
    on_progress: Callable[[int], None] | None = None  # called with the count read so far
    total: int | None = None  # documents in the index, once known
    method: str = ""  # how it was read: "documents API (search key)", "search (keyset)", ...
    incomplete_groups: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[dict]:
        with errors("reading the documents of", self.settings, self.index):
            yield from self._read()

    def _read(self) -> Iterator[dict]:
        from meilisearch.errors import MeilisearchApiError

        if self.key is not None:
            candidates = [("given key", client(self.settings, key=self.key))]
        else:
            candidates = [("search key", search_client(self.settings))]
            if self.fallback_to_indexing_key and self.settings.reading_key != self.settings.indexing_key:
                candidates.append(("admin key", client(self.settings)))
        for position, (name, reader) in enumerate(candidates):
            index = reader.index(self.index)
            try:
                first = self._page(index, 0)
            except MeilisearchApiError as exc:
                if exc.status_code not in (401, 403):
                    raise
                if position + 1 < len(candidates):
                    log.info("the %s may not read documents (%s); trying the next key", name, exc.code)
                    continue
                if self.key is not None or self.fallback_to_indexing_key:
                    raise
                self.method = f"search (keyset, {name})"
                yield from self._keyset(index)
                return
            self.method = f"documents API ({name})"
            yield from self._documents(index, first)
            return

    # The documents API: offset paging to the end. ------------------------------------------------
    def _page(self, index, offset: int):
        params = {"offset": offset, "limit": self.page_size}
        if self.fields:
            params["fields"] = list(self.fields)
        return index.get_documents(params)

    def _documents(self, index, page) -> Iterator[dict]:
        """Documents added while paging may be missed and replaced ones may shift; an id already
        returned is not returned twice."""
        self.total = page.total
        seen: set[str] = set()
        offset = 0
        while True:
            for document in page.results:
                document = dict(document)
                doc_id = document.get("id")
                if doc_id in seen:
                    continue
                seen.add(doc_id)
                yield document
            offset += len(page.results)
            if self.on_progress:
                self.on_progress(len(seen))
            if not page.results or offset >= page.total:
                return
            page = self._page(index, offset)

    # Search only: the keyset walk. ------------------------------------------------------------------
    def _keyset(self, index) -> Iterator[dict]:
        from meilisearch.errors import MeilisearchApiError

        walk = _KeysetWalk(index, self.page_size, self.on_progress, self.fields)
        try:
            walk.scan(None, KEYSET_FIELDS)
        except MeilisearchApiError as exc:
            if exc.code not in ("invalid_search_sort", "invalid_search_filter") or walk.found:
                raise
            # INDEX_SETTINGS not applied yet (the consumer applies them): nothing to order by,
            # so one page is all a placeholder search can return.
            log.warning("index %s cannot be sorted and filtered by %s (INDEX_SETTINGS not applied); "
                        "reading its first %d documents only", self.index, KEYSET_FIELDS[0], self.page_size)
            walk.keep(walk.search(None))
        for filter_ in walk.incomplete_groups:
            log.warning("%d or more documents match %s and are identical in every sortable field; "
                        "only %d of them may have been read", self.page_size, filter_, self.page_size)
        self.incomplete_groups = walk.incomplete_groups
        self.total = len(walk.found)
        log.debug("read %d documents in %d searches", len(walk.found), walk.queries)
        yield from walk.found.values()


def _literal(value) -> str:
    """A value as a MeiliSearch filter literal."""
    if isinstance(value, bool):
        return json.dumps(str(value).lower())
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def _both(*filters: str | None) -> str | None:
    parts = [f"({f})" for f in filters if f]
    return " AND ".join(parts) or None


class _KeysetWalk:
    def __init__(self, index, page_size: int, on_progress, fields):
        self.index = index
        self.page_size = page_size
        self.on_progress = on_progress
        # The walk needs the keyset fields and ids in every hit, whatever the caller asked for.
        self.fields = sorted(set(fields) | set(KEYSET_FIELDS) | {"id"}) if fields else None
        self.found: dict[str, dict] = {}
        self.queries = 0
        self.incomplete_groups: list[str] = []

    def search(self, filter_: str | None, sort: list[str] | None = None) -> list[dict]:
        params: dict = {"limit": self.page_size, "offset": 0}
        if filter_:
            params["filter"] = filter_
        if sort:
            params["sort"] = sort
        if self.fields:
            params["attributesToRetrieve"] = self.fields
        self.queries += 1
        return self.index.search("", params)["hits"]

    def keep(self, hits: Iterable[dict]) -> None:
        for hit in hits:
            self.found[str(hit.get("id", json.dumps(hit, sort_keys=True)))] = hit
        if self.on_progress:
            self.on_progress(len(self.found))

    def scan(self, base: str | None, fields: tuple[str, ...]) -> None:
        """Keep every document matching `base`, by keyset on fields[0]."""
        name, rest = fields[0], fields[1:]
        has_field = _both(base, f"{name} >= {LOWEST}")
        after = None
        while True:
            hits = self.search(_both(has_field, None if after is None else f"{name} > {_literal(after)}"),
                               [f"{name}:asc"])
            if len(hits) < self.page_size:
                self.keep(hits)
                break
            last = hits[-1].get(name)
            # Everything sorting before `last` is complete in this page; the documents equal
            # to it may continue past the page, so they are fetched as their own group.
            self.keep(h for h in hits if h.get(name) != last)
            self.group(_both(base, f"{name} = {_literal(last)}"), rest)
            after = last
        # Documents without the field (missing or null) cannot be ordered by it.
        self.group(_both(base, f"NOT {name} >= {LOWEST}"), rest)

    def group(self, filter_: str, rest: tuple[str, ...]) -> None:
        hits = self.search(filter_)
        if len(hits) < self.page_size:
            self.keep(hits)
        elif rest:
            self.scan(filter_, rest)
        else:
            # Over a page of documents identical in every sortable field: nothing left to
            # order them by. Keep what one page holds and say so.
            self.keep(hits)
            self.incomplete_groups.append(filter_)


def index_exists(settings: Settings, index: str, key: str | None = None) -> bool:
    try:
        with errors("looking up", settings, index):
            client(settings, key=key).get_index(index)
        return True
    except MeiliError as exc:
        if exc.kind == NOT_FOUND:
            return False
        raise


def index_uids(settings: Settings, prefix: str = "") -> list[str]:
    """Names of the indexes starting with `prefix` (indexing key)."""
    with errors("listing indexes", settings):
        found = client(settings).get_indexes({"limit": 10_000})["results"]
    return sorted(i.uid for i in found if i.uid.startswith(prefix))


def create_index(settings: Settings, index: str, index_settings: dict | None = None) -> None:
    """Create the index keyed by `id`, apply `index_settings`, and wait for both."""
    meili = client(settings)
    with errors("creating", settings, index):
        task = meili.create_index(index, {"primaryKey": "id"})
    wait_for_task(meili, settings, task.task_uid, "creating the index", index)
    if index_settings:
        with errors("updating the settings of", settings, index):
            task = meili.index(index).update_settings(index_settings)
        wait_for_task(meili, settings, task.task_uid, "updating the index settings", index)


def enqueue_documents(settings: Settings, index: str, documents: list[dict]) -> int:
    """Send documents to be added or replaced; returns the task uid (wait_for_task waits for it)."""
    with errors("adding documents to", settings, index):
        return client(settings).index(index).add_documents(documents, primary_key="id").task_uid


def document_count(settings: Settings, index: str) -> int:
    """How many documents the index holds: read with the readers' key (the documents API's total),
    else from the index's stats with the indexing key (a search key without documents.get)."""
    try:
        with errors("counting the documents of", settings, index):
            return search_client(settings).index(index).get_documents({"limit": 1, "fields": ["id"]}).total
    except MeiliError as exc:
        if exc.kind != DENIED or settings.reading_key == settings.indexing_key:
            raise
    with errors("counting the documents of", settings, index):
        return client(settings).index(index).get_stats().number_of_documents


def delete_index(settings: Settings, index: str, key: str | None = None) -> bool:
    """Delete the index and wait (with the indexing key unless `key` is given: a least-privilege
    consumer key may not delete indexes); False when there was none."""
    meili = client(settings, key=key)
    try:
        with errors("deleting", settings, index):
            task = meili.delete_index(index)
        wait_for_task(meili, settings, task.task_uid, "deleting the index", index)
    except MeiliError as exc:
        if exc.code == "index_not_found":
            return False
        raise
    return True


def answers(settings: Settings) -> bool:
    """True when MeiliSearch answers its health check."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{settings.meili_url}/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


# --- the enricher's partial updates (enricher/writer.py) ------------------------------------------
# MeiliSearch's partial update (documents PUT) creates a document whose id is missing, and its
# "edit documents by function", which would touch only documents matching a filter, needs a key
# with every action ("*") in 1.21 even when it holds "documents.*" (measured): a key that could
# create other keys. So the enricher reads, updates and checks after, with the pipeline's keys.

def ids_filter(ids: Iterable[str]) -> str:
    return "id IN [" + ", ".join(_literal(i) for i in ids) + "]"


def documents_by_id(settings: Settings, index: str, ids: list[str], fields: list[str]) -> dict[str, dict]:
    """The documents of `ids` that exist, with `fields`, read with the readers' key."""
    if not ids:
        return {}
    with errors("reading documents of", settings, index):
        page = search_client(settings).index(index).get_documents(
            {"filter": ids_filter(ids), "fields": list(fields), "limit": len(ids)})
    return {doc["id"]: dict(doc) for doc in (dict(d) for d in page.results)}


def documents_where(settings: Settings, index: str, filter_: str, fields: list[str], limit: int,
                    offset: int = 0) -> tuple[list[dict], int]:
    """One page of the documents matching `filter_`, and how many match in all (readers' key)."""
    with errors("reading documents of", settings, index):
        page = search_client(settings).index(index).get_documents(
            {"filter": filter_, "fields": list(fields), "limit": limit, "offset": offset})
    return [dict(d) for d in page.results], page.total


def update_documents(settings: Settings, index: str, documents: list[dict]) -> int:
    """Enqueue a partial update (fields merged into each document; a missing id is CREATED:
    callers check); returns the task uid."""
    with errors(f"updating {len(documents)} documents of", settings, index):
        return client(settings).index(index).update_documents(documents, primary_key="id").task_uid


def delete_documents_where(settings: Settings, index: str, filter_: str) -> int:
    """Enqueue the deletion of the documents matching `filter_`; returns the task uid."""
    with errors("deleting documents of", settings, index):
        return client(settings).index(index).delete_documents(filter=filter_).task_uid


def wait(settings: Settings, task_uid: int, what: str, index: str | None = None):
    """wait_for_task with the indexing key."""
    return wait_for_task(client(settings), settings, task_uid, what, index)
