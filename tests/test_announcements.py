"""The consumer announces what MeiliSearch confirmed: one imgpipe.indexed.IndexedImage per indexed
document and per deletion on KAFKA_INDEXED_TOPIC, keyed by the object key; nothing for an
event superseded by a later one of the same object or for a dead letter."""
from __future__ import annotations

import pytest

from fixtures.images import encode, gradient_pattern
from imgpipe import s3
from imgpipe.events import DELETE, UPSERT, ImageEvent, utc_now_iso
from imgpipe.indexed import parse_indexed
from tests.helpers import all_documents, read_topic, upload
from tests.test_deletes import consume, send, upsert

pytestmark = pytest.mark.integration


def test_after_a_drain_the_indexed_topic_holds_one_announcement_per_document_and_per_delete(settings):
    keys = upload(settings, {f"{name}.jpg": encode(gradient_pattern(160, 120, seed=i), ".jpg")
                             for i, name in enumerate(("a", "b", "c", "gone"))})
    a, b, c, gone = keys
    s3.client(settings).delete_object(Bucket=settings.s3_bucket, Key=gone)
    broken = ImageEvent(settings.s3_bucket, settings.s3_raw_prefix + "missing.jpg", 10, "x", utc_now_iso(),
                        utc_now_iso())
    # b twice: the first is superseded and not announced; gone: deleted; missing.jpg: a dead letter.
    send(settings, [upsert(settings, a), upsert(settings, b), upsert(settings, b), upsert(settings, c), broken,
                    ImageEvent.deletion(settings.s3_bucket, gone, utc_now_iso())])
    summary = consume(settings)
    assert (summary["indexed"], summary["deleted"], summary["dead_lettered"]) == (3, 1, 1)

    messages = read_topic(settings, settings.kafka_indexed_topic, expected=4, timeout=30)
    announcements = [parse_indexed(m.value()) for m in messages]
    assert [m.key().decode() for m in messages] == [x.key for x in announcements]  # keyed by object key
    upserts = {x.key: x for x in announcements if x.action == UPSERT}
    deletes = [x for x in announcements if x.action == DELETE]
    documents = {d["key"]: d for d in all_documents(settings)}
    assert sorted(upserts) == sorted(documents) == [a, b, c]
    assert len([x for x in announcements if x.action == UPSERT]) == 3  # b once, not twice
    for key, announcement in upserts.items():
        assert (announcement.id, announcement.etag) == (documents[key]["id"], documents[key]["etag"])
        assert announcement.thumbnail_key == documents[key]["thumbnail_key"]
    assert [(x.key, x.bucket) for x in deletes] == [(gone, settings.s3_bucket)]
