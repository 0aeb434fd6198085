"""The announcements of what is indexed: after MeiliSearch confirmed a document or a deletion, one
imgpipe.indexed.IndexedImage per object to KAFKA_INDEXED_TOPIC, keyed by the object key, for the
enrichment stages. The loop commits the messages behind them only once Kafka acknowledged them:
a crash in between announces again (an enricher compares the etag), never loses one."""
from __future__ import annotations

import threading

from imgpipe import kafka
from imgpipe.indexed import IndexedImage
from imgpipe.settings import Settings


class IndexedAnnouncer:
    """Announcements added with add(), written by flush(). KAFKA_INDEXED_TOPIC empty: none."""

    def __init__(self, settings: Settings, stop: threading.Event, producer=None):
        self.topic = settings.kafka_indexed_topic
        self.stop = stop
        self.sent = 0
        self._producer = producer if producer is not None or not self.topic else kafka.producer(settings)
        self._pending: list[kafka.Outgoing] = []

    def add(self, announcement: IndexedImage) -> None:
        if self.topic:
            self._pending.append(kafka.Outgoing(announcement.message_key, announcement.to_json()))

    def flush(self) -> int:
        """Write what was added and return once the broker acknowledged it (outages retried)."""
        pending, self._pending = self._pending, []
        if not pending:
            return 0
        written = kafka.deliver(self._producer, self.topic, pending, self.stop)
        self.sent += written
        return written
