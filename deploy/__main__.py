"""Deploy imgpipe on AWS with CloudFormation (deploy/imgpipe.yaml): `up`, `status`, `down`.

`up` creates the stack, or updates it when it exists, prints its events as they come while it
waits, then its outputs (bucket, queue URL, host, the SSH tunnel to MeiliSearch). It returns
once the host has installed the project and started its services. `down` deletes the stack;
the bucket and its images stay unless --delete-bucket (asked first, or --yes).

Credentials and region come from boto3's usual chain (AWS_PROFILE, AWS_ACCESS_KEY_ID..., AWS_REGION).
Exit status: 0 done, 1 AWS failed or the stack is in a state that needs you (named on stderr),
2 usage or settings error (one line, nothing sent to AWS).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

from imgpipe import cli
from imgpipe.errors import UserError
from imgpipe.settings import REPO_ROOT

DEFAULT_STACK = "imgpipe"

# Option -> (template parameter, environment variable). One table for parsing, --help and the env.
UP_OPTIONS = {
    "ssh_cidr": ("SshCidr", "DEPLOY_SSH_CIDR"),
    "key_name": ("KeyName", "DEPLOY_KEY_NAME"),
    "instance_type": ("InstanceType", "DEPLOY_INSTANCE_TYPE"),
    "repository_url": ("RepositoryUrl", "DEPLOY_REPOSITORY_URL"),
    "git_ref": ("GitRef", "DEPLOY_GIT_REF"),
}


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m deploy", __doc__, [
        "python -m deploy up --ssh-cidr 203.0.113.7/32 --key-name my-key      # create (or update) stack imgpipe",
        "python -m deploy up --ssh-cidr $(curl -s https://checkip.amazonaws.com)/32 --key-name my-key --git-ref v1.2",
        "python -m deploy status --stack-name imgpipe-test --region eu-west-1",
        "python -m deploy down --delete-bucket --yes                           # also empty and delete the bucket"])
    # The common options go on each command, so they may come after it (`deploy up --region ...`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--stack-name", default=os.environ.get("DEPLOY_STACK_NAME") or DEFAULT_STACK,
                        help="CloudFormation stack name (env DEPLOY_STACK_NAME)")
    common.add_argument("--region", default=None,
                        help="AWS region (env AWS_REGION or AWS_DEFAULT_REGION, or the profile's)")
    common.add_argument("--profile", default=None, help="AWS profile (env AWS_PROFILE)")
    common.add_argument("--poll-seconds", type=float, default=float(os.environ.get("DEPLOY_POLL_SECONDS") or 5),
                        help="how often to read new stack events while waiting (env DEPLOY_POLL_SECONDS)")
    common.add_argument("--timeout-minutes", type=float, default=60.0,
                        help="stop waiting after this long (the stack change itself goes on)")
    sub = p.add_subparsers(dest="command", required=True, metavar="{up,status,down}")

    up = sub.add_parser("up", help="create or update the stack, wait, print the outputs", parents=[common],
                        formatter_class=cli.HelpFormatter, description=(
                            "Create the stack or update it. On create --ssh-cidr and --key-name are "
                            "required; --repository-url and --git-ref default to this clone's https "
                            "origin and its HEAD commit. On update, what you do not pass keeps its value."))
    up.add_argument("--ssh-cidr", help="the only network allowed to SSH to the host, e.g. 203.0.113.7/32; "
                    "0.0.0.0/0 is refused (env DEPLOY_SSH_CIDR)")
    up.add_argument("--key-name", help="existing EC2 key pair for SSH (env DEPLOY_KEY_NAME)")
    up.add_argument("--instance-type", help="host instance type, default m6i.large (env DEPLOY_INSTANCE_TYPE)")
    up.add_argument("--repository-url", help="https git URL the host installs from (env DEPLOY_REPOSITORY_URL)")
    up.add_argument("--git-ref", help="branch, tag or commit to install (env DEPLOY_GIT_REF)")
    up.add_argument("--parameter", action="append", default=[], metavar="NAME=VALUE",
                    help="any other template parameter, e.g. RootVolumeSize=50 (repeatable)")
    up.add_argument("--keep-on-failure", action="store_true",
                    help="leave a failed stack as it is for debugging (no rollback)")

    sub.add_parser("status", help="print the stack's status and outputs", parents=[common],
                   formatter_class=cli.HelpFormatter)

    down = sub.add_parser("down", help="delete the stack; the bucket stays unless --delete-bucket",
                          parents=[common], formatter_class=cli.HelpFormatter)
    down.add_argument("--delete-bucket", action="store_true",
                      help="also empty and delete the image bucket (every object in it)")
    down.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging()
    return cli.run(lambda: settings_mistakes_are_usage_errors(COMMANDS[args.command], args))


def settings_mistakes_are_usage_errors(command, args) -> int:
    """The policy on AWS's errors: what this machine's settings must fix (no credentials, no region,
    refused credentials) is a one-line usage error (exit 2); anything else stays an AWS failure (1)."""
    from imgpipe.aws import AwsError

    try:
        return command(args)
    except AwsError as exc:
        if not exc.user_must_fix:
            raise
        if exc.code == "NoCredentialsError":
            message = ("no AWS credentials found: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
                       "AWS_SECRET_ACCESS_KEY, or run `aws configure`")
        elif exc.code == "NoRegionError":
            message = "no AWS region: pass --region or set AWS_REGION (e.g. us-east-1)"
        elif exc.code == "ProfileNotFound":
            message = exc.message
        else:
            message = (f"AWS refused the credentials while {exc.operation} {exc.target} ({exc.code}): "
                       "check AWS_PROFILE or the access keys, or log in again").replace("  ", " ")
        raise UserError(message) from None


# --- Commands -----------------------------------------------------------------------------------
def cmd_up(args) -> int:
    from deploy import cloudformation as cfn

    values = up_parameters(args)
    # What was given is checked before any call to AWS (0.0.0.0/0 never leaves this machine).
    template = cfn.load_template()
    cfn.check_parameters(template, values, creating=False)
    aws = connect(args)
    waits = waiting(args)
    existing = cfn.describe(aws, args.stack_name)
    if existing is None:
        for key, default in local_git_defaults().items():
            values.setdefault(key, default)
        cfn.check_parameters(template, values, creating=True)
        print(f"creating stack {args.stack_name} in {aws.region} (installs {values.get('RepositoryUrl', '?')} "
              f"at {values.get('GitRef', '?')}); the host's set-up takes several minutes", file=sys.stderr)
    elif "GitRef" in values and values["GitRef"] != cfn.parameters(existing).get("GitRef"):
        print("note: a running host installs its code once; to move it to the new ref, see "
              "deploy/README.md (Updating). Consumer fleet hosts, if any, are replaced one at a time.",
              file=sys.stderr)
    action, stack = cfn.up(aws, args.stack_name, values, out=sys.stderr,
                           keep_on_failure=args.keep_on_failure, **waits)
    print_stack(stack, aws.region, headline={"create": "created", "update": "updated",
                                             "unchanged": "unchanged (nothing to update)"}[action])
    print_fleet(aws, stack)
    return cli.EXIT_OK


def cmd_status(args) -> int:
    from deploy import cloudformation as cfn

    aws = connect(args)
    stack = cfn.describe(aws, args.stack_name)
    if stack is None:
        print(f"error: no stack {args.stack_name} in {aws.region}; create it with `python -m deploy up`",
              file=sys.stderr)
        return cli.EXIT_FAILURES
    print_stack(stack, aws.region)
    print_fleet(aws, stack)
    status = stack["StackStatus"]
    if status in cfn.UPDATABLE or status.endswith("_IN_PROGRESS"):
        return cli.EXIT_OK
    for reason in cfn.failure_reasons(aws, stack["StackId"]):
        print(f"  failed: {reason}")
    return cli.EXIT_FAILURES


def cmd_down(args) -> int:
    from deploy import cloudformation as cfn

    aws = connect(args)
    stack = cfn.describe(aws, args.stack_name)
    if stack is None:
        print(f"no stack {args.stack_name} in {aws.region}: nothing to delete", file=sys.stderr)
        return cli.EXIT_OK
    if stack["StackStatus"].endswith("_IN_PROGRESS"):
        raise cfn.StackFailed(f"stack {args.stack_name} is busy ({stack['StackStatus']}); "
                              "wait for it: `python -m deploy status`")
    bucket = cfn.bucket_of(aws, stack)
    contents = cfn.count_objects(aws, bucket) if bucket else None
    what = (f"stack {args.stack_name} in {aws.region} (the host with its Kafka and MeiliSearch data, "
            "the consumer fleet if any, the queues, the roles)")
    if args.delete_bucket and bucket:
        what += f" AND the bucket s3://{bucket} ({describe_contents(contents)})"
    confirm(f"Delete {what}?", args.yes)
    cfn.down(aws, stack, out=sys.stderr, **waiting(args))
    print(f"deleted stack {args.stack_name}")
    if not bucket or contents is None:
        return cli.EXIT_OK
    if args.delete_bucket:
        deleted = cfn.delete_bucket(aws, bucket)
        print(f"deleted s3://{bucket} ({deleted} object(s))")
    else:
        print(f"kept s3://{bucket} ({describe_contents(contents)}; the template retains it). "
              f"Delete it with: aws s3 rb s3://{bucket} --force")
    return cli.EXIT_OK


COMMANDS = {"up": cmd_up, "status": cmd_status, "down": cmd_down}


# --- Helpers ------------------------------------------------------------------------------------
def connect(args):
    from imgpipe.aws import Session

    return Session(region=args.region, profile=args.profile)


def waiting(args) -> dict:
    if args.poll_seconds <= 0 or args.timeout_minutes <= 0:
        raise UserError("--poll-seconds and --timeout-minutes must be positive")
    return {"poll_seconds": args.poll_seconds, "timeout_seconds": args.timeout_minutes * 60}


def up_parameters(args) -> dict[str, str]:
    """Template parameters from the options, then their environment variables, then --parameter."""
    values = {}
    for option, (parameter, env) in UP_OPTIONS.items():
        value = getattr(args, option) or os.environ.get(env)
        if value:
            values[parameter] = value.strip()
    for item in args.parameter:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UserError(f"--parameter {item!r} must be NAME=VALUE")
        values[name.strip()] = value
    return values


def local_git_defaults() -> dict[str, str]:
    """RepositoryUrl and GitRef of this clone: its origin (as https) and its HEAD commit."""
    defaults = {}
    origin = _git("remote", "get-url", "origin")
    if origin:
        ssh = re.fullmatch(r"git@([^:]+):(.+)", origin)
        url = f"https://{ssh.group(1)}/{ssh.group(2)}" if ssh else origin
        if url.startswith("https://"):
            defaults["RepositoryUrl"] = url
    head = _git("rev-parse", "HEAD")
    if head:
        defaults["GitRef"] = head
    return defaults


def _git(*args: str) -> str:
    try:
        result = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise UserError(f"{question} Refusing without a terminal to ask on: pass --yes")
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise UserError("not confirmed; nothing deleted")


def describe_contents(contents: tuple[int, bool] | None) -> str:
    if contents is None:
        return "already gone"
    count, more = contents
    if count == 0:
        return "empty"
    return f"{'more than ' if more else ''}{count} object(s)"


def print_stack(stack: dict, region: str, headline: str | None = None) -> None:
    from deploy import cloudformation as cfn

    status = stack["StackStatus"]
    reason = stack.get("StackStatusReason")
    print(f"stack {stack['StackName']} ({region}): {headline + ', ' if headline else ''}{status}"
          + (f" - {reason}" if reason and status not in cfn.UPDATABLE else ""))
    values = cfn.outputs(stack)
    width = max((len(k) for k in values), default=0)
    for key in sorted(values):
        print(f"  {key:<{width}}  {values[key]}")


def print_fleet(aws, stack: dict) -> None:
    from deploy import cloudformation as cfn

    fleet = cfn.fleet_of(aws, stack)
    if fleet is not None:
        print(fleet.describe())


if __name__ == "__main__":
    sys.exit(main())
