"""The consumer's bookkeeping, with no Kafka, MeiliSearch, S3 or thread in it: every message
polled and not yet committed, what became of it, and what may happen next.

The rules it keeps:
- Per partition, messages are committed in offset order, each partition up to its oldest
  unfinished message: a slow image holds back its own partition's commit only.
- Several events of one object: an event waits for the event before it of the same object (their
  writes to S3 happen in order), and only the last is indexed; the earlier ones are superseded,
  unless they were sent to MeiliSearch already (MeiliSearch applies tasks in the order sent). An
  older event delivered after a newer one (by S3's sequencer) is superseded at once.
- What has finished since the last batch goes to MeiliSearch together; a message is finished when
  its batch is confirmed.
- Revoked or lost partitions are dropped: their works are never committed by us (the next owner
  gets them again) and their outcomes are not reported.

A message is named by its topic, partition and offset; the loop keeps its own handle on it.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterable

from imgpipe.deadletters import Stage
from imgpipe.events import ImageEvent, compare_sequencers

Partition = tuple[str, int]
ObjectKey = tuple[str, str]  # (bucket, key)


@dataclass(frozen=True)
class MessageRef:
    topic: str
    partition: int
    offset: int

    @property
    def topic_partition(self) -> Partition:
        return self.topic, self.partition

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


class Outcome:
    """What became of one message: Indexed, Deleted, DeadLettered or Superseded."""

    __slots__ = ()


@dataclass(frozen=True)
class Indexed(Outcome):
    document: dict


@dataclass(frozen=True)
class Deleted(Outcome):
    document_id: str


@dataclass(frozen=True)
class DeadLettered(Outcome):
    stage: str
    reason: str


@dataclass(frozen=True)
class Superseded(Outcome):
    """A later event of the same object replaces this one: nothing of it is indexed."""


SUPERSEDED = Superseded()


@dataclass(eq=False)
class Work:
    """One polled message, from poll to commit."""

    ref: MessageRef
    event: ImageEvent | None
    handle: object = None  # the loop's own (the Kafka message); never looked at here
    started: float = 0.0  # when it was polled (the loop's clock)
    waits_for: Work | None = None  # the previous event of the same object: run after it
    outcome: Outcome | None = None  # None while it runs
    replaced: bool = False  # a later event of the same object came before this one was sent
    sent: bool = False
    finished: bool = False
    dropped: bool = False  # its partition was revoked or lost

    @property
    def key(self) -> ObjectKey | None:
        return (self.event.bucket, self.event.key) if self.event is not None else None


@dataclass(eq=False)
class Batch:
    """The works that go to MeiliSearch together: one task for their documents, one for their
    deletions. `task` is the loop's handle on what was submitted."""

    works: list[Work]
    indexed: list[Work] = field(init=False)  # in the order of `documents`
    deleted: list[Work] = field(init=False)
    task: object = None
    checked_at: float = 0.0  # when MeiliSearch was last asked whether the tasks are done

    def __post_init__(self) -> None:
        self.indexed = [w for w in self.works if isinstance(w.outcome, Indexed)]
        self.deleted = [w for w in self.works if isinstance(w.outcome, Deleted)]

    @property
    def documents(self) -> list[dict]:
        return [w.outcome.document for w in self.indexed]

    @property
    def deletion_ids(self) -> list[str]:
        return [w.outcome.document_id for w in self.deleted]

    def reported(self) -> list[Work]:
        """The works whose outcome is ours to report (announce, dead-letter, count): not those of
        partitions given up meanwhile, which the next owner processes again."""
        return [w for w in self.works if not w.dropped]


class Ledger:
    def __init__(self, batch_size: int, batch_seconds: float, backlog_running: int | None = None,
                 backlog_batch_seconds: float = 0.0):
        """More than `backlog_running` images polled and still running is a backlog, under which a
        small batch waits `backlog_batch_seconds` (None: never)."""
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds
        self.backlog_running = backlog_running
        self.backlog_batch_seconds = max(batch_seconds, backlog_batch_seconds)
        self._last_batch_at = float("-inf")
        self._partitions: dict[Partition, deque[Work]] = {}  # polled, not committed, in offset order
        self._running: dict[Work, None] = {}  # outcome not known yet, oldest first
        self._done: list[Work] = []  # outcome known, not sent to MeiliSearch yet
        self._batches: deque[Batch] = deque()  # sent, not confirmed yet, oldest first
        self._last_of_object: dict[ObjectKey, Work] = {}  # the newest unfinished event per object

    # --- counts the loop decides by -------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Messages polled and not committed."""
        return sum(len(works) for works in self._partitions.values())

    @property
    def running(self) -> list[Work]:
        return list(self._running)

    @property
    def running_count(self) -> int:
        return len(self._running)

    @property
    def done_count(self) -> int:
        return len(self._done)

    @property
    def batches(self) -> tuple[Batch, ...]:
        """Sent to MeiliSearch, not confirmed yet, oldest first."""
        return tuple(self._batches)

    # --- a message arrives, a message finishes ----------------------------------------------------
    def add(self, ref: MessageRef, event: ImageEvent | None, handle: object = None, now: float = 0.0) -> Work:
        """Record a polled message. Without an event (unreadable), finish() it with why. Its
        `waits_for` names the work to run after; an outcome already set means nothing to run."""
        work = Work(ref, event, handle, now)
        self._partitions.setdefault(ref.topic_partition, deque()).append(work)
        if event is None:
            self._running[work] = None
            return work
        before = self._last_of_object.get(work.key)
        if before is not None and before.event.sequencer and event.sequencer and \
                compare_sequencers(event.sequencer, before.event.sequencer) < 0:
            work.outcome = SUPERSEDED  # an older change of the object, delivered late: nothing to do
            self._done.append(work)
            return work
        self._last_of_object[work.key] = work
        if before is not None:
            work.waits_for = before
            if not before.sent:
                before.replaced = True
        self._running[work] = None
        return work

    def finish(self, work: Work, outcome: Outcome) -> None:
        """The work's outcome is known (its processing ended). Ignored for a work dropped meanwhile."""
        if work not in self._running:
            return
        del self._running[work]
        work.outcome = outcome
        self._done.append(work)

    # --- batches for MeiliSearch ---------------------------------------------------------------------
    # MeiliSearch spends a fixed ~40 ms of CPU on each task, whatever its size, and ~0.5 ms per
    # document with its descriptor (measured on the consumer's documents: 3.3 ms per document in
    # tasks of 14, 1.3 in tasks of 50, 1.0 in tasks of 125). So under load the documents go in
    # large batches, sent while earlier ones are still queued, and a small batch goes only when
    # MeiliSearch has nothing of ours: at once when nothing else runs, else once its oldest waited
    # batch_seconds (a trickle: latency). Under a backlog (the loop says: more than half a batch
    # of images polled and waiting), a document waits in the queue anyway: a small batch waits
    # backlog_batch_seconds, and tasks of ~100 documents instead of ~14 leave the CPU to the
    # images. A short queue behind one slow image is no backlog: its documents keep their latency.
    @property
    def backlog(self) -> bool:
        return self.backlog_running is not None and len(self._running) > self.backlog_running

    def batch_due(self, now: float, full: bool, idle: bool) -> bool:
        """Should what is done go to MeiliSearch now? `full`: no room to poll more; `idle`: the
        last poll brought nothing."""
        if not self._done:
            return False
        if self.backlog:  # its documents were polled long ago: the window runs from the last batch
            waited, window = now - self._last_batch_at, self.backlog_batch_seconds
        else:
            waited, window = now - self._done[0].started, self.batch_seconds
        # No room to poll (`full`) needs a commit, so a batch, at once: unless MeiliSearch has a
        # batch of ours (the loop waits for it, and its commit makes the room), or under a backlog,
        # where the workers have plenty queued and a poll can wait for the backlog window. Sending
        # at once there made a 1,000-photo drain a cycle of send ~10 documents, confirm, commit,
        # poll ~10, full again: 30 tasks of 4-30 documents before the backlog rule ever applied.
        room_needed = full and not self.backlog
        return (len(self._done) >= self.batch_size
                or (not self._batches and (room_needed or (idle and not self._running) or waited >= window)))

    def take_batch(self, now: float = 0.0) -> Batch:
        """Everything done since the last batch, as the next batch sent (the caller submits it)."""
        self._last_batch_at = now
        works, self._done = self._done, []
        for work in works:
            work.sent = True
            if work.replaced:
                work.outcome = SUPERSEDED
        batch = Batch(works)
        self._batches.append(batch)
        return batch

    def newer_ids(self, batch: Batch) -> frozenset[str]:
        """Ids of documents and deletions sent or done after `batch`: a failed add of `batch` must
        not be redone for them (an older version would land over the newer one)."""
        later = [w for b in self._batches if b is not batch for w in b.works] + self._done
        ids = set()
        for work in later:
            if work.replaced:
                continue
            if isinstance(work.outcome, Indexed):
                ids.add(work.outcome.document["id"])
            elif isinstance(work.outcome, Deleted):
                ids.add(work.outcome.document_id)
        return frozenset(ids)

    def confirm(self, batch: Batch, refused: dict[int, str] | None = None) -> Batch:
        """MeiliSearch finished the batch's tasks; `refused` maps positions in `batch.documents`
        to why MeiliSearch refused that document (it becomes a dead letter). Every work of the
        batch is then finished; commit_offsets() says how far that lets each partition go."""
        self._batches.remove(batch)
        for position, reason in (refused or {}).items():
            batch.indexed[position].outcome = DeadLettered(Stage.INDEX, reason)
        for work in batch.works:
            work.finished = True
            if work.key is not None and self._last_of_object.get(work.key) is work:
                del self._last_of_object[work.key]
        return batch

    # --- commits and rebalances -----------------------------------------------------------------------
    def commit_offsets(self) -> dict[Partition, int]:
        """Per partition, the offset to commit (the next one to read) past the finished works at
        its head; partitions that cannot move are left out. Those works leave the ledger."""
        offsets: dict[Partition, int] = {}
        for partition, works in self._partitions.items():
            while works and works[0].finished:
                offsets[partition] = works.popleft().ref.offset + 1
        return offsets

    def drop(self, partitions: Iterable[Partition]) -> list[Work]:
        """Forget the partitions' works (revoked or lost): never committed, never reported, their
        outcomes ignored when they come. Returns them (the caller may wait for those running)."""
        dropped = []
        for partition in partitions:
            dropped.extend(self._partitions.pop(partition, ()))
        for work in dropped:
            work.dropped = True
            self._running.pop(work, None)
            if work.key is not None and self._last_of_object.get(work.key) is work:
                del self._last_of_object[work.key]
        self._done = [w for w in self._done if not w.dropped]
        return dropped
