"""The consumer's ledger, without Kafka, MeiliSearch or S3: the orderings that decide what is
indexed, what is dead-lettered and which offsets are committed."""
from __future__ import annotations

from consumer.ledger import (SUPERSEDED, DeadLettered, Deleted, Indexed, Ledger, MessageRef, Superseded)
from imgpipe.events import ImageEvent

TOPIC = "events"


def event(key: str, delete: bool = False, sequencer: str | None = None) -> ImageEvent:
    if delete:
        return ImageEvent.deletion("raw", key, "2026-12-01T00:00:00Z", sequencer)
    return ImageEvent("raw", key, 10, f"etag-{key}", "2026-12-01T00:00:00Z", "2026-12-01T00:00:00Z",
                      sequencer=sequencer)


def doc(key: str) -> dict:
    return {"id": f"id-{key}", "key": key}


def ledger(batch_size: int = 100) -> Ledger:
    return Ledger(batch_size=batch_size, batch_seconds=0.5)


def add(book: Ledger, partition: int, offset: int, key: str | None, **kw):
    return book.add(MessageRef(TOPIC, partition, offset), event(key, **kw) if key else None)


def confirm_all(book: Ledger, refused: dict[int, str] | None = None):
    batch = book.take_batch()
    book.confirm(batch, refused)
    return batch


def test_out_of_order_completion_across_partitions_commits_each_partition_up_to_its_oldest_unfinished():
    book = ledger()
    a0, a1 = add(book, 0, 0, "a0"), add(book, 0, 1, "a1")
    b0, b1 = add(book, 1, 0, "b0"), add(book, 1, 1, "b1")
    # Partition 1's second image and partition 0's second finish first.
    book.finish(b1, Indexed(doc("b1")))
    book.finish(a1, Indexed(doc("a1")))
    confirm_all(book)
    assert book.commit_offsets() == {}  # each partition's first message is still running
    book.finish(b0, Indexed(doc("b0")))
    confirm_all(book)
    assert book.commit_offsets() == {(TOPIC, 1): 2}
    book.finish(a0, Indexed(doc("a0")))
    confirm_all(book)
    assert book.commit_offsets() == {(TOPIC, 0): 2}
    assert book.in_flight == 0


def test_a_slow_image_holds_back_only_its_own_partition():
    book = ledger()
    slow = add(book, 0, 0, "slow")
    behind = add(book, 0, 1, "behind")
    others = [add(book, 1, offset, f"fast-{offset}") for offset in range(5)]
    for work in [behind] + others:
        book.finish(work, Indexed(doc(work.event.key)))
    batch = confirm_all(book)
    assert [w.outcome.document["key"] for w in batch.indexed] == ["behind"] + [f"fast-{i}" for i in range(5)]
    assert book.commit_offsets() == {(TOPIC, 1): 5}
    assert book.in_flight == 2 and book.running == [slow]
    book.finish(slow, Indexed(doc("slow")))
    confirm_all(book)
    assert book.commit_offsets() == {(TOPIC, 0): 2}


def test_two_events_of_one_object_the_second_waits_the_first_is_superseded_both_are_committed():
    book = ledger()
    first = add(book, 0, 0, "cat.jpg")
    second = add(book, 0, 1, "cat.jpg")
    assert first.waits_for is None and second.waits_for is first
    book.finish(first, Indexed(doc("cat.jpg")))
    book.finish(second, Indexed({**doc("cat.jpg"), "etag": "new"}))
    batch = confirm_all(book)
    assert batch.documents == [{**doc("cat.jpg"), "etag": "new"}]
    assert first.outcome is SUPERSEDED
    assert book.commit_offsets() == {(TOPIC, 0): 2}


def test_an_event_already_sent_to_meilisearch_is_not_superseded_by_a_later_one():
    book = ledger()
    first = add(book, 0, 0, "cat.jpg")
    book.finish(first, Indexed(doc("cat.jpg")))
    sent = book.take_batch()
    second = add(book, 0, 1, "cat.jpg")
    assert second.waits_for is first
    assert sent.documents == [doc("cat.jpg")]  # MeiliSearch applies the two tasks in order
    book.finish(second, Indexed(doc("cat.jpg")))
    assert book.newer_ids(sent) == {"id-cat.jpg"}  # a failed first add must not be redone over it
    book.confirm(sent)
    assert isinstance(first.outcome, Indexed)
    assert book.commit_offsets() == {(TOPIC, 0): 1}


def test_an_older_event_delivered_late_is_superseded_without_running():
    book = ledger()
    newer = add(book, 0, 0, "cat.jpg", sequencer="0055AED6DCD90281E6")
    older = add(book, 0, 1, "cat.jpg", sequencer="0055AED6DCD90281E5")
    assert isinstance(older.outcome, Superseded) and older not in book.running
    book.finish(newer, Indexed(doc("cat.jpg")))
    batch = confirm_all(book)
    assert batch.documents == [doc("cat.jpg")] and not newer.replaced
    assert book.commit_offsets() == {(TOPIC, 0): 2}


def test_a_delete_after_an_upsert_sends_only_the_deletion():
    book = ledger()
    upsert = add(book, 0, 0, "cat.jpg")
    delete = add(book, 0, 1, "cat.jpg", delete=True)
    book.finish(upsert, Indexed(doc("cat.jpg")))
    book.finish(delete, Deleted("id-cat.jpg"))
    batch = confirm_all(book)
    assert batch.documents == [] and batch.deletion_ids == ["id-cat.jpg"]
    assert upsert.outcome is SUPERSEDED and batch.deleted == [delete]
    assert book.commit_offsets() == {(TOPIC, 0): 2}


def test_a_dead_letter_is_reported_and_committed_like_any_other_outcome():
    book = ledger()
    broken = add(book, 0, 0, None)  # unreadable message: no event
    good = add(book, 0, 1, "cat.jpg")
    book.finish(broken, DeadLettered("validate", "not JSON"))
    book.finish(good, Indexed(doc("cat.jpg")))
    batch = confirm_all(book)
    assert [w.outcome for w in batch.reported()] == [DeadLettered("validate", "not JSON"), Indexed(doc("cat.jpg"))]
    assert batch.documents == [doc("cat.jpg")]
    assert book.commit_offsets() == {(TOPIC, 0): 2}


def test_a_document_meilisearch_refused_becomes_a_dead_letter_at_the_index_stage_and_is_committed():
    book = ledger()
    works = [add(book, 0, offset, f"img-{offset}") for offset in range(3)]
    for work in works:
        book.finish(work, Indexed(doc(work.event.key)))
    batch = book.take_batch()
    book.confirm(batch, {1: "MeiliSearch refused the document (invalid_vectors)"})
    assert works[1].outcome == DeadLettered("index", "MeiliSearch refused the document (invalid_vectors)")
    assert isinstance(works[0].outcome, Indexed) and isinstance(works[2].outcome, Indexed)
    assert book.commit_offsets() == {(TOPIC, 0): 3}


def test_a_revoke_mid_flight_drops_the_partitions_works_and_never_commits_them():
    book = ledger()
    kept = add(book, 0, 0, "kept")
    sent = add(book, 1, 0, "sent")
    done = add(book, 1, 1, "done")
    running = add(book, 1, 2, "running")
    book.finish(sent, Indexed(doc("sent")))
    in_meili = book.take_batch()
    book.finish(done, Indexed(doc("done")))
    assert book.drop([(TOPIC, 1)]) == [sent, done, running]
    assert book.in_flight == 1 and book.done_count == 0 and book.running == [kept]
    book.finish(running, Indexed(doc("running")))  # its processing ends after the revoke: ignored
    assert book.done_count == 0
    book.confirm(in_meili)
    assert in_meili.reported() == []  # the next owner processes (and reports) it again
    book.finish(kept, Indexed(doc("kept")))
    confirm_all(book)
    assert book.commit_offsets() == {(TOPIC, 0): 1}
    # A new event of a dropped object does not wait for the dropped one.
    assert add(book, 0, 1, "running").waits_for is None


def test_a_batch_is_due_when_full_when_idle_or_when_its_oldest_waited_long_enough():
    book = ledger(batch_size=3)
    assert not book.batch_due(now=0.0, full=True, idle=True)  # nothing done
    works = [add(book, 0, offset, f"img-{offset}") for offset in range(4)]
    book.finish(works[0], Indexed(doc("img-0")))
    assert not book.batch_due(now=0.1, full=False, idle=False)
    assert book.batch_due(now=0.1, full=True, idle=False)
    assert not book.batch_due(now=0.1, full=False, idle=True)  # others still running
    assert book.batch_due(now=0.6, full=False, idle=False)  # MeiliSearch has nothing else: latency
    book.finish(works[1], Indexed(doc("img-1")))
    book.finish(works[2], Indexed(doc("img-2")))
    assert book.batch_due(now=0.1, full=False, idle=False)  # a batch's worth


def test_under_a_backlog_a_small_batch_waits_backlog_seconds_from_the_last_batch_not_from_its_poll():
    # More than two running is a backlog; eight were polled at t=0. MeiliSearch costs ~40 ms of
    # CPU per task: under a backlog the documents go in tasks of a second's worth, not one per turn.
    book = Ledger(batch_size=100, batch_seconds=0.1, backlog_running=2, backlog_batch_seconds=1.0)
    works = [add(book, 0, offset, f"img-{offset}") for offset in range(8)]
    book.finish(works[0], Indexed(doc("img-0")))
    assert book.backlog
    assert book.batch_due(now=5.0, full=False, idle=False)  # the first batch goes at once
    book.confirm(book.take_batch(now=5.0))
    for work in works[1:4]:
        book.finish(work, Indexed(doc(work.event.key)))
    # Polled 5 s ago, but the last batch went 0.5 s ago: not yet (the trickle's rule would send it).
    assert not book.batch_due(now=5.5, full=False, idle=False)
    assert book.batch_due(now=6.0, full=False, idle=False)
    # No room to poll either: the workers have a backlog queued, the room can wait for the window.
    assert not book.batch_due(now=5.5, full=True, idle=False)
    assert len(book.take_batch(now=6.0).documents) == 3
    # Two left running: no backlog, the trickle's window again, from the oldest document's poll.
    for work in works[4:6]:
        book.finish(work, Indexed(doc(work.event.key)))
    assert not book.backlog
    book.confirm(book.batches[0])
    assert book.batch_due(now=6.0, full=False, idle=False)


def test_the_consumer_loop_keeps_backlog_batches_for_more_than_half_a_batch_running():
    # The loop's ledger, as the consumer builds it: without the backlog rule wired in, a drain
    # goes back to tasks of ~14 documents (nothing else would fail).
    import threading

    from consumer.loop import ImageConsumerLoop
    from imgpipe.settings import Settings

    book = ImageConsumerLoop(Settings(consumer_batch_size=10), None, None, None, None, None, None,
                             threading.Event()).ledger
    works = [add(book, 0, offset, f"img-{offset}") for offset in range(8)]
    book.finish(works[0], Indexed(doc("img-0")))
    book.confirm(book.take_batch(now=5.0))
    book.finish(works[1], Indexed(doc("img-1")))
    assert book.backlog  # 6 running, more than half of 10
    assert not book.batch_due(now=5.5, full=False, idle=False)
    assert book.batch_due(now=6.0, full=False, idle=False)
    book.finish(works[2], Indexed(doc("img-2")))
    assert not book.backlog  # 5 running


def test_the_consumer_loop_notes_when_its_first_image_came_back_from_the_pools():
    # bench's consumer_startup ends there (process start -> first image processed).
    import threading
    from concurrent.futures import Future

    from consumer.loop import ImageConsumerLoop
    from imgpipe.settings import Settings

    loop = ImageConsumerLoop(Settings(consumer_batch_size=10), None, None, None, None, None, None,
                             threading.Event())
    works = [add(loop.ledger, 0, offset, f"img-{offset}") for offset in range(3)]
    futures = {work: Future() for work in works}
    loop._futures.update(futures)
    loop._collect()
    assert loop.stats.first_processed_at is None  # polled, still running
    futures[works[1]].set_result(Indexed(doc("img-1")))
    loop._collect()
    first = loop.stats.first_processed_at
    assert first is not None and loop.ledger.done_count == 1
    futures[works[0]].set_result(Indexed(doc("img-0")))
    loop._collect()
    assert loop.stats.first_processed_at == first and loop.ledger.done_count == 2
    assert loop.stats.as_dict()["first_processed_monotonic"] == first


def test_with_a_batch_in_meilisearch_a_small_batch_waits_for_it_or_for_batch_seconds():
    book = ledger(batch_size=10)
    works = [add(book, 0, 0, "img-0")]
    book.finish(works[0], Indexed(doc("img-0")))
    assert book.batch_due(now=0.0, full=False, idle=True)  # nothing else runs, nothing of ours queued
    first = book.take_batch()
    works += [add(book, 0, offset, f"img-{offset}") for offset in (1, 2)]
    book.finish(works[1], Indexed(doc("img-1")))
    book.finish(works[2], Indexed(doc("img-2")))
    # A trickle does not pile up one task per image behind the first one...
    assert not book.batch_due(now=0.0, full=False, idle=True)
    assert not book.batch_due(now=0.6, full=False, idle=True)
    # ... nor when there is no room to poll: the loop waits for the batch in MeiliSearch (its
    # commit makes the room) while more finish, instead of sending a small task per turn.
    assert not book.batch_due(now=0.0, full=True, idle=False)
    book.confirm(first)
    assert book.batch_due(now=0.0, full=False, idle=True)
    assert book.batch_due(now=0.0, full=True, idle=False)  # nothing of ours in MeiliSearch: at once


def test_a_full_consumer_loop_waits_a_moment_instead_of_polling_or_spinning():
    # Under a backlog a full loop may hold its batch for the backlog window: meanwhile each turn
    # must wait (not spin on an empty poll), and must not poll Kafka (there is no room).
    import threading

    from consumer.loop import BUSY_POLL_SECONDS, ImageConsumerLoop
    from imgpipe.settings import Settings

    class RecordingStop(threading.Event):
        def __init__(self):
            super().__init__()
            self.waits = []

        def wait(self, timeout=None):
            self.waits.append(timeout)
            return False

    stop = RecordingStop()
    loop = ImageConsumerLoop(Settings(consumer_batch_size=2), None, None, None, None, None, None, stop)
    for offset in range(loop.limit):
        add(loop.ledger, 0, offset, f"img-{offset}")
    assert loop._poll() == []  # the consumer is None: polling it would raise
    assert stop.waits == [BUSY_POLL_SECONDS]
