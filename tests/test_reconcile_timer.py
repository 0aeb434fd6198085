"""producer/reconcile.py --every: after the first pass, only objects modified since the previous
pass began are re-announced (a dead-lettered file is not resent every time), orphans always go."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from producer.reconcile import Differences, main, recent

NOW = datetime(2026, 12, 3, 10, 0, tzinfo=timezone.utc)


def obj(key: str, minutes_ago: float) -> dict:
    return {"Key": key, "Size": 1, "ETag": "x", "LastModified": NOW - timedelta(minutes=minutes_ago)}


def test_the_first_pass_keeps_everything_later_ones_only_what_changed_since():
    found = Differences(missing_documents=[obj("old-broken.jpg", 60), obj("new.jpg", 1)],
                        changed=[obj("old-changed.jpg", 30), obj("just-changed.jpg", 0)],
                        orphans=[{"bucket": "images", "key": "gone.jpg"}])
    assert recent(found, None) == 0 and len(found.missing_documents) == 2
    assert recent(found, NOW - timedelta(minutes=5)) == 2
    assert [o["Key"] for o in found.missing_documents + found.changed] == ["new.jpg", "just-changed.jpg"]
    assert found.orphans == [{"bucket": "images", "key": "gone.jpg"}]


def test_every_refuses_nonsense_with_exit_2(capsys):
    assert main(["--every", "0"]) == 2
    assert main(["--every", "60", "--dry-run"]) == 2
    assert "--every needs a positive number" in capsys.readouterr().err
