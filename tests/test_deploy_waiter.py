"""deploy's wait loop against a scripted CloudFormation control plane (moto settles a stack within
the API call, so it never shows events arriving over several polls): each event printed once,
oldest first, the first failure named, and a wait that gives up says so. The control plane is
botocore's Stubber, as in test_mapreduce_emr.py."""
from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

import pytest

from deploy.cloudformation import StackFailed, Waiter

START = datetime(2026, 12, 1, 12, 0, 0, tzinfo=timezone.utc)
STACK = "arn:aws:cloudformation:us-east-1:123456789012:stack/imgpipe/1"


def event(n: int, logical: str, status: str, reason: str = "") -> dict:
    return {"StackId": STACK, "StackName": "imgpipe", "EventId": f"e{n}", "Timestamp": START + timedelta(seconds=n),
            "LogicalResourceId": logical,
            "ResourceType": "AWS::EC2::Instance" if logical == "Host" else "AWS::CloudFormation::Stack",
            "ResourceStatus": status, "ResourceStatusReason": reason}


class StubbedAws:
    """A real boto3 CloudFormation client under botocore's Stubber (answers checked against the
    service model): poll i answers with the events of steps 0..i, newest first, and step i's status."""

    def __init__(self, script):
        import boto3
        from botocore.stub import Stubber

        self.cloudformation = boto3.client("cloudformation", region_name="us-east-1", aws_access_key_id="x",
                                           aws_secret_access_key="x")
        self.stubber = Stubber(self.cloudformation)
        for i, (status, _) in enumerate(script):
            events = [e for _, step in script[:i + 1] for e in step]
            self.stubber.add_response("describe_stack_events", {"StackEvents": events[::-1]})
            self.stubber.add_response("describe_stacks", {"Stacks": [{
                "StackName": "imgpipe", "StackId": STACK, "StackStatus": status, "CreationTime": START}]})
        self.stubber.activate()


def waiter(script, **kwargs) -> tuple[Waiter, io.StringIO]:
    out = io.StringIO()
    w = Waiter(StubbedAws(script), STACK, out, poll_seconds=5, since=START, sleep=lambda _: None, **kwargs)
    return w, out


def test_events_are_printed_once_in_order_and_the_first_failure_is_the_cause():
    w, out = waiter([
        ("CREATE_IN_PROGRESS", [event(0, "imgpipe", "CREATE_IN_PROGRESS", "User Initiated"),
                                event(1, "Host", "CREATE_IN_PROGRESS")]),
        ("ROLLBACK_IN_PROGRESS", [event(2, "Host", "CREATE_FAILED", "instance type not supported in zone"),
                                  event(3, "imgpipe", "ROLLBACK_IN_PROGRESS", "The following resource(s) failed")]),
        ("ROLLBACK_COMPLETE", [event(4, "Host", "DELETE_COMPLETE"), event(5, "imgpipe", "ROLLBACK_COMPLETE")]),
    ])
    stack = w.until_settled()
    assert stack["StackStatus"] == "ROLLBACK_COMPLETE"
    lines = out.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["CREATE_IN_PROGRESS", "CREATE_IN_PROGRESS", "CREATE_FAILED",
                                                   "ROLLBACK_IN_PROGRESS", "DELETE_COMPLETE", "ROLLBACK_COMPLETE"]
    assert lines[2].endswith("Host  instance type not supported in zone")
    assert "User Initiated" not in lines[0]
    assert w.first_failure() == "Host: instance type not supported in zone"


def test_events_of_earlier_changes_are_not_shown():
    old = event(-60, "imgpipe", "CREATE_COMPLETE")
    w, out = waiter([("UPDATE_COMPLETE", [old, event(1, "imgpipe", "UPDATE_COMPLETE")])])
    w.seen.add(old["EventId"])  # what skip_past_events does before the update
    w.since = None
    w.until_settled()
    assert [line.split()[1] for line in out.getvalue().splitlines()] == ["UPDATE_COMPLETE"]


def test_a_wait_that_runs_out_says_the_change_goes_on():
    ticks = iter(range(0, 10_000, 100))
    in_progress = ("CREATE_IN_PROGRESS", [event(0, "imgpipe", "CREATE_IN_PROGRESS")])
    w, _ = waiter([in_progress, (in_progress[0], []), (in_progress[0], []), (in_progress[0], [])],
                  timeout_seconds=250, clock=lambda: next(ticks))
    with pytest.raises(StackFailed, match="still CREATE_IN_PROGRESS after 4 min; it goes on"):
        w.until_settled()
