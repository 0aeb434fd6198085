"""AWS's control plane (EMR, and SQS for S3 Event Notifications): clients, botocore's errors said
in the pipeline's terms, and the few SQS calls the event-driven producer makes.

S3, the data path, has its own module (imgpipe.s3). Endpoints follow botocore's own variables
(AWS_ENDPOINT_URL_EMR, AWS_ENDPOINT_URL_SQS, ...), which is how the tests point these clients at moto.
"""
from __future__ import annotations

from contextlib import contextmanager

from imgpipe.errors import DENIED, NOT_FOUND, REJECTED, UNAVAILABLE, ServiceError
from imgpipe.settings import Settings

_DENIED = {"AccessDenied", "AccessDeniedException", "UnrecognizedClientException", "InvalidClientTokenId",
           "ExpiredTokenException", "SignatureDoesNotMatch", "NoCredentialsError", "UnauthorizedOperation"}
_NOT_FOUND = {"ResourceNotFoundException", "NotFound", "NoSuchEntity", "ValidationError.NotFound",
              "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}


class AwsError(ServiceError):
    """A failed AWS API call: the service (emr, sqs, cloudformation), AWS's error code and its kind."""


def client(settings: Settings, service: str):
    import boto3
    from botocore.config import Config

    # A long poll waits up to 20 s for messages: the read timeout must outlast it.
    return boto3.client(service, region_name=settings.aws_region, config=Config(read_timeout=60))


def translate(exc: BaseException, service: str, operation: str, target: str = "") -> AwsError:
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(exc, AwsError):
        return exc
    if isinstance(exc, NoCredentialsError):
        return AwsError(service, operation, target, "NoCredentialsError",
                        "no AWS credentials found (AWS_PROFILE, AWS_ACCESS_KEY_ID, or an instance role)", DENIED)
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
    return AwsError(service, operation, target, type(exc).__name__, str(exc), UNAVAILABLE)


@contextmanager
def errors(service: str, operation: str, target: str = ""):
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise translate(exc, service, operation, target) from None


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
