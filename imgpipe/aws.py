"""AWS's control plane (EMR today): clients and botocore's errors said in the pipeline's terms.

S3, the data path, has its own module (imgpipe.s3). Endpoints follow botocore's own variables
(AWS_ENDPOINT_URL_EMR, ...), which is how the tests point these clients at moto.
"""
from __future__ import annotations

from contextlib import contextmanager

from imgpipe.errors import DENIED, NOT_FOUND, REJECTED, UNAVAILABLE, ServiceError
from imgpipe.settings import Settings

_DENIED = {"AccessDenied", "AccessDeniedException", "UnrecognizedClientException", "InvalidClientTokenId",
           "ExpiredTokenException", "SignatureDoesNotMatch", "NoCredentialsError", "UnauthorizedOperation"}
_NOT_FOUND = {"ResourceNotFoundException", "NotFound", "NoSuchEntity", "ValidationError.NotFound"}


class AwsError(ServiceError):
    """A failed AWS API call: the service (emr, sqs, cloudformation), AWS's error code and its kind."""


def client(settings: Settings, service: str):
    import boto3

    return boto3.client(service, region_name=settings.aws_region)


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
