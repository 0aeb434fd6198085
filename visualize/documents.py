"""Where visualize gets its documents: every document of the index, or an exported CSV.

Reading uses only the search endpoint, because the search-only key has the `search` action
and not `documents.get`. A placeholder search never reaches past `pagination.maxTotalHits`
(1000 by default), so offset paging alone would silently stop at the 1000th document.
Instead the index is walked by keyset: sort by `timestamp`, take a page, then ask for
`timestamp > last` — every query starts at offset 0 and stays under the cap however large
the index is. Documents sharing the boundary timestamp (a bulk upload can give thousands
the same second) are fetched as a group, split further on the next sortable field when
the group itself fills a page.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Iterable

from imgpipe.document import FIELDS
from imgpipe.errors import UserError

log = logging.getLogger(__name__)

# MeiliSearch's default pagination.maxTotalHits: no query may ask for more hits than this.
PAGE_SIZE = 1000
# Fields that are both sortable and filterable in INDEX_SETTINGS, most distinguishing first.
KEYSET_FIELDS = ("timestamp", "size_kb", "sharpness", "width", "height", "megapixels", "faces")
# Below every real value: `field >= LOWEST` holds for every document that has the field.
LOWEST = -9007199254740991

NUMERIC_FIELDS = ("size_bytes", "size_kb", "width", "height", "channels", "bit_depth", "megapixels",
                  "mean_brightness", "sharpness", "edge_density", "faces", "timestamp", "processing_ms")


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


class _Reader:
    def __init__(self, index, page_size: int, on_progress: Callable[[int], None] | None):
        self.index = index
        self.page_size = page_size
        self.on_progress = on_progress
        self.found: dict[str, dict] = {}
        self.queries = 0
        self.incomplete_groups: list[str] = []

    def search(self, filter_: str | None, sort: list[str] | None = None) -> list[dict]:
        params: dict = {"limit": self.page_size, "offset": 0}
        if filter_:
            params["filter"] = filter_
        if sort:
            params["sort"] = sort
        self.queries += 1
        return self.index.search("", params)["hits"]

    def keep(self, hits: Iterable[dict]) -> None:
        for hit in hits:
            self.found[str(hit.get("id", json.dumps(hit, sort_keys=True)))] = hit
        if self.on_progress:
            self.on_progress(len(self.found))

    def scan(self, base: str | None, fields: tuple[str, ...]) -> None:
        """Keep every document matching `base`, by keyset on fields[0]."""
        field, rest = fields[0], fields[1:]
        has_field = _both(base, f"{field} >= {LOWEST}")
        after = None
        while True:
            hits = self.search(_both(has_field, None if after is None else f"{field} > {_literal(after)}"),
                               [f"{field}:asc"])
            if len(hits) < self.page_size:
                self.keep(hits)
                break
            last = hits[-1].get(field)
            # Everything sorting before `last` is complete in this page; the documents equal
            # to it may continue past the page, so they are fetched as their own group.
            self.keep(h for h in hits if h.get(field) != last)
            self.group(_both(base, f"{field} = {_literal(last)}"), rest)
            after = last
        # Documents without the field (missing or null) cannot be ordered by it.
        self.group(_both(base, f"NOT {field} >= {LOWEST}"), rest)

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


def read_all_documents(index, page_size: int = PAGE_SIZE,
                       on_progress: Callable[[int], None] | None = None) -> list[dict]:
    """Every document of a MeiliSearch index (a `meilisearch.index.Index`), via search only.

    `page_size` must not exceed the index's `pagination.maxTotalHits`. Raises the client's
    errors unchanged (index_not_found, communication errors): the caller decides.
    """
    from meilisearch.errors import MeilisearchApiError

    reader = _Reader(index, page_size, on_progress)
    try:
        reader.scan(None, KEYSET_FIELDS)
    except MeilisearchApiError as exc:
        if exc.code not in ("invalid_search_sort", "invalid_search_filter") or reader.found:
            raise
        # INDEX_SETTINGS not applied yet (the consumer applies them): nothing to order by,
        # so one page is all a placeholder search can return.
        log.warning("index %s cannot be sorted and filtered by %s (INDEX_SETTINGS not applied); "
                    "reading its first %d documents only", index.uid, KEYSET_FIELDS[0], page_size)
        reader.keep(reader.search(None))
        return list(reader.found.values())
    for filter_ in reader.incomplete_groups:
        log.warning("%d or more documents match %s and are identical in every sortable field; "
                    "only %d of them may have been read", page_size, filter_, page_size)
    log.debug("read %d documents in %d searches", len(reader.found), reader.queries)
    return list(reader.found.values())


def to_frame(docs: Iterable[dict]):
    """Documents as a DataFrame with every FIELDS column present and numeric columns numeric."""
    import pandas as pd

    frame = pd.DataFrame.from_records(list(docs))
    for name in FIELDS:
        if name not in frame.columns:
            frame[name] = None
    for name in NUMERIC_FIELDS:
        frame[name] = pd.to_numeric(frame[name], errors="coerce")
    ordered = list(FIELDS) + [c for c in frame.columns if c not in FIELDS]
    return frame[ordered]


def read_csv(path: Path):
    """An exported CSV (columns named as FIELDS) as the same DataFrame `to_frame` builds."""
    import pandas as pd

    try:
        # Everything as text first: phash and sha256 are hex strings that could look numeric.
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise UserError(f"CSV file not found: {path}") from None
    except pd.errors.EmptyDataError:
        raw = pd.DataFrame(columns=list(FIELDS))
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path} as CSV: {str(exc).strip()}") from None
    if "file_name" not in raw.columns and "id" not in raw.columns:
        raise UserError(f"{path} has no file_name or id column; expected the columns of imgpipe.document.FIELDS")
    return to_frame({k: (v if v != "" else None) for k, v in row.items()} for row in raw.to_dict("records"))
