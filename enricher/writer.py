"""Adding the models' fields to documents that exist, and only to the version they were computed
from.

MeiliSearch's partial update creates a document whose id is missing, so a late enrichment could
resurrect a deleted image; and it merges into whatever version is there, so an older version's
faces could land on a newer image. Hence, per batch: read the documents' etags; update only
those whose etag is the announcement's; once that task succeeded, read them again. A document
without an etag was deleted in between and re-created by the update: it is deleted again, by a
filter that matches only such a document (`etag NOT EXISTS`), so a newer upload indexed in the
meantime is never touched. A document whose etag changed in between carries fields of the older
version until the newer version's announcement, which follows on the same partition, is
enriched; `enriched_etag` tells readers which version the fields are of.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from imgpipe import meili
from imgpipe.retry import retry_until_stopped
from imgpipe.settings import Settings

log = logging.getLogger(__name__)

VERSION_FIELDS = ("faces_version", "text_version", "enrichment_version")


@dataclass(frozen=True)
class Enrichment:
    id: str
    etag: str
    fields: dict


@dataclass
class WriteOutcome:
    applied: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # deleted before the update: nothing written
    stale: list[str] = field(default_factory=list)  # a newer version is indexed: nothing written
    undone: list[str] = field(default_factory=list)  # deleted during the update: removed again
    crossed: list[str] = field(default_factory=list)  # replaced during the update: fixed by its own announcement


def same_etag(a: str, b: str) -> bool:
    return a.strip('"') == b.strip('"')


def with_version(fields: dict, current_doc: dict, versions: dict[str, int], enrichment_version: int) -> dict:
    """`fields` plus enrichment_version when, with them, every model's fields are current."""
    merged = {**{k: current_doc.get(k) for k in versions}, **fields}
    if all(merged.get(name) == version for name, version in versions.items()):
        return {**fields, "enrichment_version": enrichment_version}
    return fields


class EnrichmentWriter:
    def __init__(self, settings: Settings, stop: threading.Event, versions: dict[str, int],
                 enrichment_version: int):
        self.settings = settings
        self.index = settings.meili_index
        self.stop = stop
        self.versions = versions
        self.enrichment_version = enrichment_version

    def _retried(self, operation):
        return retry_until_stopped(operation, self.stop)

    def _read(self, ids: list[str]) -> dict[str, dict]:
        return self._retried(lambda: meili.documents_by_id(self.settings, self.index, ids,
                                                           ["id", "etag", *self.versions]))

    def _run(self, enqueue, what: str) -> None:
        def attempt() -> None:
            meili.wait(self.settings, enqueue(), what, self.index)

        self._retried(attempt)

    def write(self, enrichments: list[Enrichment]) -> WriteOutcome:
        """Apply the batch (one enrichment per id); returns what became of each."""
        outcome = WriteOutcome()
        if not enrichments:
            return outcome
        current = self._read([e.id for e in enrichments])
        updates = []
        for enrichment in enrichments:
            document = current.get(enrichment.id)
            if document is None:
                outcome.missing.append(enrichment.id)
            elif not same_etag(str(document.get("etag", "")), enrichment.etag):
                outcome.stale.append(enrichment.id)
            else:
                fields = with_version(enrichment.fields, document, self.versions, self.enrichment_version)
                updates.append({"id": enrichment.id, **fields, "enriched_etag": enrichment.etag})
        if not updates:
            return outcome
        self._run(lambda: meili.update_documents(self.settings, self.index, updates),
                  f"adding the enrichment of {len(updates)} documents")
        # The check after: what happened to these documents between our read and our update.
        after = self._read([u["id"] for u in updates])
        resurrected = [u["id"] for u in updates if u["id"] in after and "etag" not in after[u["id"]]]
        if resurrected:
            log.info("%d document(s) were deleted while their enrichment was written; deleting them again",
                     len(resurrected))
            filter_ = f"({meili.ids_filter(resurrected)}) AND etag NOT EXISTS"
            self._run(lambda: meili.delete_documents_where(self.settings, self.index, filter_),
                      f"removing {len(resurrected)} re-created documents")
        for update in updates:
            doc_id = update["id"]
            if doc_id in resurrected or doc_id not in after:
                outcome.undone.append(doc_id)
            elif not same_etag(str(after[doc_id].get("etag", "")), update["enriched_etag"]):
                outcome.crossed.append(doc_id)
            else:
                outcome.applied.append(doc_id)
        return outcome
