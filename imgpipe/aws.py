"""AWS's control plane (EMR, SQS for S3 Event Notifications, CloudFormation and SSM for
`python -m deploy`): clients, botocore's errors said in the pipeline's terms (AwsError with a
kind), and the calls the pipeline and the deployment make.

S3, the data path, has its own module (imgpipe.s3). Endpoints follow botocore's own variables
(AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_EMR, ...), which is how the tests point these clients at moto.
No other module builds a boto3 client for these services or catches botocore's exceptions.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from imgpipe.errors import DENIED, NOT_FOUND, REJECTED, UNAVAILABLE, ServiceError
from imgpipe.settings import Settings

_DENIED = {"AccessDenied", "AccessDeniedException", "UnrecognizedClientException", "InvalidClientTokenId",
           "ExpiredTokenException", "SignatureDoesNotMatch", "NoCredentialsError", "UnauthorizedOperation"}
# Codes that mean "these credentials are not good", whatever the service.
BAD_CREDENTIAL_CODES = frozenset({
    "InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException", "ExpiredToken",
    "ExpiredTokenException", "InvalidAccessKeyId", "AuthFailure", "RequestExpired", "TokenRefreshRequired"})
# Codes of a mistake in this machine's AWS settings, raised before any request is sent.
SETTINGS_CODES = frozenset({"NoCredentialsError", "PartialCredentialsError", "ProfileNotFound", "NoRegionError"})
_NOT_FOUND = {"ResourceNotFoundException", "NotFound", "NoSuchEntity", "ValidationError.NotFound",
              "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}


class AwsError(ServiceError):
    """A failed AWS API call: the service (emr, sqs, cloudformation), AWS's error code and its kind."""

    @property
    def user_must_fix(self) -> bool:
        """No credentials, no region, an unknown profile, or credentials AWS refuses as such:
        settings of this machine, which no retry fixes."""
        return self.code in SETTINGS_CODES or self.code in BAD_CREDENTIAL_CODES


def client(settings: Settings, service: str, endpoint_url: str | None = None):
    import boto3
    from botocore.config import Config

    # A long poll waits up to 20 s for messages: the read timeout must outlast it.
    return boto3.client(service, region_name=settings.aws_region, config=Config(read_timeout=60),
                        endpoint_url=endpoint_url)


AWS_DOMAINS = ("amazonaws.com", "amazonaws.com.cn", "api.aws")


def queue_endpoint(queue_url: str) -> str | None:
    """The SQS endpoint a queue URL names when it is not on AWS (ElasticMQ, LocalStack, moto:
    http://host:port/account/name), else None. boto3 sends SQS requests to its own endpoint
    (AWS_ENDPOINT_URL_SQS or AWS's), not to the queue URL's host."""
    from urllib.parse import urlsplit

    parts = urlsplit(queue_url)
    host = (parts.hostname or "").lower()
    if not host or any(host == d or host.endswith("." + d) for d in AWS_DOMAINS):
        return None
    return f"{parts.scheme}://{parts.netloc}"


def queue_client(settings: Settings, queue_url: str):
    """An SQS client for this queue: at the endpoint its URL names when that is not AWS, unless
    AWS_ENDPOINT_URL_SQS or AWS_ENDPOINT_URL says otherwise (an explicit setting wins)."""
    explicit = os.environ.get("AWS_ENDPOINT_URL_SQS") or os.environ.get("AWS_ENDPOINT_URL")
    return client(settings, "sqs", None if explicit else queue_endpoint(queue_url))


class Session:
    """Clients of one AWS session and region, for a program that takes --region and --profile
    (`python -m deploy`). boto3's own chain finds the credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID...,
    SSO, an instance profile); the region is the one given, else AWS_REGION, else the profile's."""

    def __init__(self, region: str | None = None, profile: str | None = None):
        import boto3
        from botocore.config import Config

        # botocore reads AWS_DEFAULT_REGION only; AWS_REGION is the project's setting (and other SDKs').
        region = region or os.environ.get("AWS_REGION") or None
        with errors("aws", "starting a session"):
            self.session = boto3.session.Session(region_name=region, profile_name=profile or None)
        self.region = self.session.region_name
        if not self.region:
            raise AwsError("aws", "starting a session", "", "NoRegionError", "no AWS region", REJECTED)
        self._config = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=10, read_timeout=60)
        self._clients: dict[str, object] = {}

    def client(self, service: str):
        if service not in self._clients:
            with errors(service, "creating the client"):
                self._clients[service] = self.session.client(service, config=self._config)
        return self._clients[service]

    @property
    def cloudformation(self):
        return self.client("cloudformation")

    @property
    def s3(self):
        return self.client("s3")

    @property
    def ssm(self):
        return self.client("ssm")


def translate(exc: BaseException, service: str, operation: str, target: str = "") -> AwsError:
    from botocore.exceptions import (ClientError, EndpointConnectionError, NoCredentialsError, NoRegionError,
                                     PartialCredentialsError, ProfileNotFound)

    if isinstance(exc, AwsError):
        return exc
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return AwsError(service, operation, target, "NoCredentialsError",
                        "no AWS credentials found (AWS_PROFILE, AWS_ACCESS_KEY_ID, or an instance role)", DENIED)
    if isinstance(exc, ProfileNotFound):
        return AwsError(service, operation, target, "ProfileNotFound",
                        f"AWS profile not found: {exc.kwargs.get('profile')}", REJECTED)
    if isinstance(exc, NoRegionError):
        return AwsError(service, operation, target, "NoRegionError", "no AWS region", REJECTED)
    if isinstance(exc, EndpointConnectionError):
        return AwsError(service, operation, target, "EndpointConnectionError",
                        f"cannot reach {exc.kwargs.get('endpoint_url')}", UNAVAILABLE)
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "") or "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _DENIED or status == 403:
            kind = DENIED
        elif code in _NOT_FOUND or status == 404:
            kind = NOT_FOUND
        elif status is not None and 400 <= status < 500 and code not in ("Throttling", "ThrottlingException"):
            kind = REJECTED
        else:
            kind = UNAVAILABLE
        return AwsError(service, operation, target, code, str(error.get("Message", "") or ""), kind, status)
    # Anything else botocore raises (a timeout, an answer that is not AWS's, e.g. a proxy's page).
    return AwsError(service, operation, target, type(exc).__name__, (str(exc).splitlines() or [""])[0], UNAVAILABLE)


@contextmanager
def errors(service: str, operation: str, target: str = ""):
    from botocore.exceptions import BotoCoreError, ClientError
    from botocore.parsers import ResponseParserError

    try:
        yield
    except (ClientError, BotoCoreError, ResponseParserError) as exc:
        raise translate(exc, service, operation, target) from None


# --- CloudFormation and SSM: what `python -m deploy` needs ------------------------------------
def describe_stack(cfn, name: str) -> dict | None:
    """The stack (by name or id), or None when there is none."""
    try:
        with errors("cloudformation", "describing stack", name):
            stacks = cfn.describe_stacks(StackName=name)["Stacks"]
    except AwsError as exc:
        if exc.code == "ValidationError" and "does not exist" in exc.message:
            return None
        raise
    return stacks[0] if stacks else None


def stack_event_pages(cfn, stack_id: str) -> Iterator[list[dict]]:
    """The stack's events, newest first, a page at a time (stop reading when you have enough)."""
    with errors("cloudformation", "reading the events of", stack_id):
        for page in cfn.get_paginator("describe_stack_events").paginate(StackName=stack_id):
            yield page["StackEvents"]


def stack_resources(cfn, stack_id: str) -> list[dict]:
    with errors("cloudformation", "reading the resources of", stack_id):
        return cfn.describe_stack_resources(StackName=stack_id)["StackResources"]


def create_stack(cfn, **arguments) -> str:
    """CreateStack with these arguments; returns the stack id."""
    with errors("cloudformation", "creating stack", arguments.get("StackName", "")):
        return cfn.create_stack(**arguments)["StackId"]


def update_stack(cfn, **arguments) -> bool:
    """UpdateStack with these arguments; False when CloudFormation says there is nothing to update."""
    try:
        with errors("cloudformation", "updating stack", arguments.get("StackName", "")):
            cfn.update_stack(**arguments)
    except AwsError as exc:
        if exc.code == "ValidationError" and "No updates are to be performed" in exc.message:
            return False
        raise
    return True


def delete_stack(cfn, stack_id: str) -> None:
    with errors("cloudformation", "deleting stack", stack_id):
        cfn.delete_stack(StackName=stack_id)


def auto_scaling_group(autoscaling, name: str) -> dict | None:
    """The Auto Scaling group (sizes and instances), or None when there is none."""
    with errors("autoscaling", "describing the group", name):
        groups = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
    return groups[0] if groups else None


def secret_string(secrets, secret_id: str) -> str:
    """The current value of a Secrets Manager secret; AwsError NOT_FOUND while it has none."""
    with errors("secretsmanager", "reading the secret", secret_id):
        return secrets.get_secret_value(SecretId=secret_id)["SecretString"]


def put_secret_string(secrets, secret_id: str, value: str) -> None:
    with errors("secretsmanager", "writing the secret", secret_id):
        secrets.put_secret_value(SecretId=secret_id, SecretString=value)


def ssm_parameter(ssm, name: str) -> str:
    with errors("ssm", "reading the parameter", name):
        return ssm.get_parameter(Name=name)["Parameter"]["Value"]


# --- SQS: what the event-driven producer needs -----------------------------------------------
SQS_MAX_MESSAGES = 10  # per receive and per delete batch: SQS's own limit
SQS_MAX_WAIT_SECONDS = 20


def queue_attributes(sqs, queue_url: str, names: tuple[str, ...] = ("QueueArn",)) -> dict[str, str]:
    with errors("sqs", "reading the attributes of", queue_url):
        return sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=list(names)).get("Attributes", {})


def receive_messages(sqs, queue_url: str, wait_seconds: int, max_messages: int = SQS_MAX_MESSAGES) -> list[dict]:
    """One long poll: up to `max_messages` messages (Body, ReceiptHandle, MessageId and the
    ApproximateReceiveCount attribute), an empty list when none came within `wait_seconds`."""
    with errors("sqs", "receiving from", queue_url):
        response = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=max_messages,
                                       WaitTimeSeconds=wait_seconds,
                                       MessageSystemAttributeNames=["ApproximateReceiveCount"])
    return response.get("Messages", [])


def delete_messages(sqs, queue_url: str, messages: list[dict]) -> list[str]:
    """Delete these received messages (10 per request); returns the ids SQS did not delete."""
    failed: list[str] = []
    for start in range(0, len(messages), SQS_MAX_MESSAGES):
        chunk = messages[start:start + SQS_MAX_MESSAGES]
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)]
        with errors("sqs", "deleting messages from", queue_url):
            response = sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries)
        failed += [chunk[int(f["Id"])]["MessageId"] for f in response.get("Failed", [])]
    return failed
