"""The stack of deploy/imgpipe.yaml: check parameters against the template, create or update it,
follow its events until it settles, delete it, and deal with the bucket it leaves behind.

Parameters are checked here with the template's own AllowedPattern / AllowedValues / Rules before
any call to AWS, so a bad value (SSH open to 0.0.0.0/0) is refused in one line, not after a
rollback.

Every AWS call goes through imgpipe.aws (and imgpipe.s3 for the bucket): this module is policy.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, TextIO

from imgpipe import aws as awsapi
from imgpipe import s3 as s3api
from imgpipe.aws import Session as Aws
from imgpipe.errors import InfrastructureError, UserError

TEMPLATE = Path(__file__).resolve().parent / "imgpipe.yaml"
# CAPABILITY_NAMED_IAM: the EMR role names are parameters (CloudFormation picks them when empty).
CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"]
TAGS = [{"Key": "created-by", "Value": "imgpipe python -m deploy"}]

UPDATABLE = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE", "IMPORT_COMPLETE",
             "IMPORT_ROLLBACK_COMPLETE"}
# States a stack cannot be updated from: its creation or deletion failed.
DEAD_ENDS = {"ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "CREATE_FAILED", "DELETE_FAILED", "UPDATE_ROLLBACK_FAILED"}
SUCCESS = {"create": "CREATE_COMPLETE", "update": "UPDATE_COMPLETE", "delete": "DELETE_COMPLETE"}


class StackFailed(InfrastructureError):
    def __init__(self, detail: str):
        super().__init__("cloudformation", detail)


# --- The template -----------------------------------------------------------------------------
class _CfnLoader:
    """A YAML loader that reads CloudFormation's short tags (!Ref, !Sub, ...) as their long form."""

    @staticmethod
    def load(text: str) -> dict:
        import yaml

        class Loader(yaml.SafeLoader):
            pass

        def construct(loader, tag_suffix, node):
            name = "Ref" if tag_suffix == "Ref" else f"Fn::{tag_suffix}"
            if isinstance(node, yaml.ScalarNode):
                value = loader.construct_scalar(node)
                if tag_suffix == "GetAtt":
                    value = value.split(".", 1)
            elif isinstance(node, yaml.SequenceNode):
                value = loader.construct_sequence(node, deep=True)
            else:
                value = loader.construct_mapping(node, deep=True)
            return {name: value}

        Loader.add_multi_constructor("!", construct)
        return yaml.load(text, Loader=Loader)  # noqa: S506 - SafeLoader subclass


def load_template(path: Path = TEMPLATE) -> dict:
    return _CfnLoader.load(path.read_text(encoding="utf-8"))


def check_parameters(template: dict, values: dict[str, str], creating: bool) -> None:
    """Refuse values the template would refuse, all problems in one message. On create every
    parameter without a default must be given; on update the others keep their previous value."""
    declared = template.get("Parameters", {})
    # The Rules' messages say it best (0.0.0.0/0); a parameter they flag is not flagged twice.
    problems = [message for _, message in _rule_violations(template, values)]
    flagged = {parameter for parameter, _ in _rule_violations(template, values)}
    for name in values:
        if name not in declared:
            problems.append(f"{name} is not a parameter of {TEMPLATE.name} "
                            f"(known: {', '.join(sorted(declared))})")
    for name, spec in declared.items():
        if name in flagged:
            continue
        if name not in values:
            if creating and "Default" not in spec:
                problems.append(f"{name} is required ({spec.get('Description', '').strip()})")
            continue
        value = str(values[name])
        pattern = spec.get("AllowedPattern")
        if pattern and not re.fullmatch(pattern, value):
            problems.append(f"{name} {value!r}: {spec.get('ConstraintDescription', f'must match {pattern}')}")
        if "AllowedValues" in spec and value not in [str(v) for v in spec["AllowedValues"]]:
            problems.append(f"{name} {value!r} must be one of {', '.join(map(str, spec['AllowedValues']))}")
        if spec.get("Type") == "Number":
            try:
                number = float(value)
            except ValueError:
                problems.append(f"{name} {value!r} must be a number")
            else:
                if "MinValue" in spec and number < float(spec["MinValue"]):
                    problems.append(f"{name} must be at least {spec['MinValue']}")
                if "MaxValue" in spec and number > float(spec["MaxValue"]):
                    problems.append(f"{name} must be at most {spec['MaxValue']}")
    if problems:
        if len(problems) == 1:
            raise UserError(problems[0])
        raise UserError("invalid parameters:\n  - " + "\n  - ".join(problems))


def _rule_violations(template: dict, values: dict[str, str]) -> list[tuple[str, str]]:
    """The template's Rules, for the one assertion form it uses: Not(Equals(Ref P, literal))."""
    problems = []
    for rule in template.get("Rules", {}).values():
        for assertion in rule.get("Assertions", []):
            test = assertion.get("Assert", {})
            equals = (test.get("Fn::Not") or [{}])[0].get("Fn::Equals")
            if not equals or not isinstance(equals[0], dict) or "Ref" not in equals[0]:
                raise ValueError(f"unsupported rule in {TEMPLATE.name}: {test}")
            parameter, forbidden = equals[0]["Ref"], str(equals[1])
            if values.get(parameter) == forbidden:
                problems.append((parameter, assertion.get("AssertDescription",
                                                          f"{parameter} must not be {forbidden}")))
    return problems


# --- Reading the stack ------------------------------------------------------------------------
def describe(aws: Aws, name: str) -> dict | None:
    """The stack (by name or id), or None if there is none. By id, a deleted stack is still
    there (DELETE_COMPLETE), which is how a wait for its deletion ends."""
    stack = awsapi.describe_stack(aws.cloudformation, name)
    if stack is None or (stack["StackStatus"] == "DELETE_COMPLETE" and not name.startswith("arn:")):
        return None
    return stack


def outputs(stack: dict) -> dict[str, str]:
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def parameters(stack: dict) -> dict[str, str]:
    return {p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters", [])}


@dataclass(frozen=True)
class Fleet:
    """The consumer fleet's Auto Scaling group as `status` shows it."""

    name: str
    minimum: int
    maximum: int
    desired: int
    in_service: int

    def describe(self) -> str:
        return (f"fleet: {self.in_service} of {self.desired} consumer host(s) in service "
                f"(min {self.minimum}, max {self.maximum}; group {self.name})")


def fleet_of(aws: Aws, stack: dict) -> Fleet | None:
    """The stack's consumer fleet, or None when it has none (ConsumerHosts=0)."""
    name = outputs(stack).get("FleetGroupName")
    if not name:
        return None
    group = awsapi.auto_scaling_group(aws.client("autoscaling"), name)
    if group is None:
        return None
    in_service = sum(1 for i in group.get("Instances", []) if i.get("LifecycleState") == "InService")
    return Fleet(name, group["MinSize"], group["MaxSize"], group["DesiredCapacity"], in_service)


def bucket_of(aws: Aws, stack: dict) -> str | None:
    """The image bucket, also of a stack whose creation failed (no outputs, bucket retained)."""
    if outputs(stack).get("BucketName"):
        return outputs(stack)["BucketName"]
    resources = awsapi.stack_resources(aws.cloudformation, stack["StackId"])
    return next((r.get("PhysicalResourceId") for r in resources if r.get("LogicalResourceId") == "ImageBucket"
                 and r.get("PhysicalResourceId")), None)


def failure_reasons(aws: Aws, stack_id: str, limit: int = 5) -> list[str]:
    """The reasons of the stack's failed events, oldest first (the first is usually the cause)."""
    reasons = []
    for page in awsapi.stack_event_pages(aws.cloudformation, stack_id):
        for event in page:
            if event["ResourceStatus"].endswith("_FAILED") and event.get("ResourceStatusReason"):
                reasons.append(f"{event['LogicalResourceId']}: {event['ResourceStatusReason']}")
    return reasons[::-1][:limit]


# --- Changing the stack -----------------------------------------------------------------------
@dataclass
class Waiter:
    """Follows a stack's events as they come (oldest first) until its status settles."""
    aws: Aws
    stack_id: str
    out: TextIO
    poll_seconds: float = 5.0
    timeout_seconds: float = 3600.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    seen: set[str] = field(default_factory=set)
    since: datetime | None = None  # also skip events older than this
    failures: list[str] = field(default_factory=list)

    def skip_past_events(self) -> None:
        """Before changing an existing stack: its events so far are history, not progress.
        (By id, not by time: this machine's clock need not agree with AWS's.)"""
        for page in awsapi.stack_event_pages(self.aws.cloudformation, self.stack_id):
            self.seen.update(event["EventId"] for event in page)
            break  # the newest page: older events cannot come back

    def new_events(self) -> list[dict]:
        fresh = []
        for page in awsapi.stack_event_pages(self.aws.cloudformation, self.stack_id):
            older = False
            for event in page:  # newest first
                if event["EventId"] in self.seen:
                    older = True
                    break
                if self.since is not None and _aware(event["Timestamp"]) < self.since:
                    older = True
                    break
                fresh.append(event)
            if older:
                break
        fresh.reverse()
        for event in fresh:
            self.seen.add(event["EventId"])
            if event["ResourceStatus"].endswith("_FAILED") and event.get("ResourceStatusReason"):
                self.failures.append(f"{event['LogicalResourceId']}: {event['ResourceStatusReason']}")
        return fresh

    def show(self, event: dict) -> None:
        stamp = _aware(event["Timestamp"]).astimezone().strftime("%H:%M:%S")
        reason = event.get("ResourceStatusReason") or ""
        if reason == "User Initiated":
            reason = ""
        line = f"  {stamp}  {event['ResourceStatus']:<20} {event['ResourceType']:<40} {event['LogicalResourceId']}"
        print(f"{line}  {reason}".rstrip(), file=self.out, flush=True)

    def until_settled(self) -> dict:
        started = self.clock()
        while True:
            for event in self.new_events():
                self.show(event)
            stack = describe(self.aws, self.stack_id)
            if stack is None or not stack["StackStatus"].endswith("_IN_PROGRESS"):
                return stack or {"StackStatus": "DELETE_COMPLETE", "StackId": self.stack_id}
            if self.clock() - started > self.timeout_seconds:
                raise StackFailed(f"{self.stack_id} still {stack['StackStatus']} after "
                                  f"{self.timeout_seconds / 60:.0f} min; it goes on without us: "
                                  "watch it with `python -m deploy status`")
            self.sleep(self.poll_seconds)

    def first_failure(self) -> str:
        # The first failure is the cause; later ones are usually "Resource creation cancelled".
        return self.failures[0] if self.failures else "no reason given"


def _aware(stamp: datetime) -> datetime:
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)


def up(aws: Aws, name: str, values: dict[str, str], out: TextIO, keep_on_failure: bool = False,
       **wait) -> tuple[str, dict]:
    """Create the stack, or update it; returns (what happened, the settled stack)."""
    template = load_template()
    existing = describe(aws, name)
    if existing is not None:
        status = existing["StackStatus"]
        if status in DEAD_ENDS:
            raise StackFailed(f"stack {name} is in {status} (an earlier run failed; `python -m deploy status` "
                              "shows why) and cannot be updated: run `python -m deploy down`, then up again")
        if status not in UPDATABLE:
            raise StackFailed(f"stack {name} is busy ({status}); wait for it: `python -m deploy status`")
    creating = existing is None
    check_parameters(template, values, creating=creating)
    body = TEMPLATE.read_text(encoding="utf-8")
    waiter = Waiter(aws, name, out, **wait)
    if creating:
        # CloudFormation resolves ImageId again at every update: pinned now, a newer Debian image
        # can never replace the host (and its data) behind an unrelated change.
        if not values.get("PinnedImageId"):
            values = {**values, "PinnedImageId": resolve_image(aws, template, values)}
        args = dict(StackName=name, TemplateBody=body, Capabilities=CAPABILITIES, Tags=TAGS,
                    Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()],
                    OnFailure="DO_NOTHING" if keep_on_failure else "ROLLBACK")
        waiter.stack_id = awsapi.create_stack(aws.cloudformation, **args)
        action = "create"
    else:
        given = [{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()]
        # What was given at create (or differs from its default) keeps its value; a default stays
        # a default (and an SSM-typed parameter is resolved again at each update anyway).
        previous = parameters(existing)
        kept = [{"ParameterKey": k, "UsePreviousValue": True}
                for k, spec in template["Parameters"].items()
                if k not in values and k in previous and not spec["Type"].startswith("AWS::SSM::")
                and ("Default" not in spec or previous[k] != str(spec["Default"]))]
        waiter.stack_id = existing["StackId"]
        waiter.skip_past_events()
        if not awsapi.update_stack(aws.cloudformation, StackName=name, TemplateBody=body,
                                   Capabilities=CAPABILITIES, Tags=TAGS, Parameters=given + kept,
                                   DisableRollback=keep_on_failure):
            return "unchanged", existing
        action = "update"
    stack = waiter.until_settled()
    if stack["StackStatus"] != SUCCESS[action]:
        raise StackFailed(f"{action} of stack {name} ended in {stack['StackStatus']}: {waiter.first_failure()}")
    return action, stack


def resolve_image(aws: Aws, template: dict, values: dict[str, str]) -> str:
    """The AMI the ImageId parameter names today (what CloudFormation would resolve)."""
    name = values.get("ImageId") or template["Parameters"]["ImageId"]["Default"]
    return awsapi.ssm_parameter(aws.ssm, name)


def down(aws: Aws, stack: dict, out: TextIO, **wait) -> dict:
    """Delete the stack and wait until it is gone (the bucket stays: DeletionPolicy Retain)."""
    name = stack["StackName"]
    waiter = Waiter(aws, stack["StackId"], out, **wait)
    waiter.skip_past_events()
    awsapi.delete_stack(aws.cloudformation, stack["StackId"])
    settled = waiter.until_settled()
    if settled["StackStatus"] != "DELETE_COMPLETE":
        raise StackFailed(f"deleting stack {name} ended in {settled['StackStatus']}: {waiter.first_failure()}")
    return settled


# --- The bucket that outlives the stack ------------------------------------------------------
def count_objects(aws: Aws, bucket: str, limit: int = 10_000) -> tuple[int, bool] | None:
    """(objects, more than `limit`), or None when the bucket does not exist."""
    return s3api.count_objects(aws.s3, bucket, limit)


def delete_bucket(aws: Aws, bucket: str) -> int:
    """Empty the bucket (every object version) and delete it; returns how many were deleted."""
    return s3api.delete_bucket(aws.s3, bucket)
