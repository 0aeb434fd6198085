"""The one place deploy/ builds AWS clients and turns botocore's errors into one-line messages.

A mistake the user fixes (no credentials, no region, refused credentials) becomes a `UserError`
(exit 2); anything else AWS says (access denied, throttling, an endpoint that does not answer)
an `InfrastructureError` naming what was being done (exit 1). Nothing here logs a request.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

from imgpipe.errors import InfrastructureError, UserError

# Error codes that mean "these credentials are not good", whatever the service.
_BAD_CREDENTIALS = {"InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException",
                    "ExpiredToken", "ExpiredTokenException", "InvalidAccessKeyId", "AuthFailure",
                    "RequestExpired", "TokenRefreshRequired"}


class Aws:
    """Clients of one session and region. boto3's own chain finds the credentials (AWS_PROFILE,
    AWS_ACCESS_KEY_ID..., SSO, an instance profile) and honours AWS_ENDPOINT_URL (tests use it)."""

    def __init__(self, region: str | None = None, profile: str | None = None):
        import boto3
        from botocore.config import Config

        # botocore reads AWS_DEFAULT_REGION only; AWS_REGION is the project's setting (and other SDKs').
        region = region or os.environ.get("AWS_REGION") or None
        with translated("starting an AWS session"):
            self.session = boto3.session.Session(region_name=region, profile_name=profile or None)
        self.region = self.session.region_name
        if not self.region:
            raise UserError("no AWS region: pass --region or set AWS_REGION (e.g. us-east-1)")
        self._config = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=10,
                              read_timeout=60)
        self._clients: dict[str, object] = {}

    def client(self, service: str):
        if service not in self._clients:
            with translated(f"creating the {service} client"):
                self._clients[service] = self.session.client(service, config=self._config)
        return self._clients[service]

    @property
    def cloudformation(self):
        return self.client("cloudformation")

    @property
    def s3(self):
        return self.client("s3")


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return response.get("Error", {}).get("Code", "")


def error_message(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return response.get("Error", {}).get("Message", "") or str(exc)


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Run an AWS call; a botocore failure becomes one line that says `what` failed and why."""
    from botocore.exceptions import (BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError,
                                     NoRegionError, PartialCredentialsError, ProfileNotFound)
    from botocore.parsers import ResponseParserError  # an answer that is not AWS's (a proxy's HTML page)

    try:
        yield
    except (NoCredentialsError, PartialCredentialsError):
        raise UserError("no AWS credentials found: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
                        "AWS_SECRET_ACCESS_KEY, or run `aws configure`") from None
    except ProfileNotFound as exc:
        raise UserError(f"AWS profile not found: {exc.kwargs.get('profile')}") from None
    except NoRegionError:
        raise UserError("no AWS region: pass --region or set AWS_REGION (e.g. us-east-1)") from None
    except EndpointConnectionError as exc:
        raise InfrastructureError("aws", f"{what}: cannot reach {exc.kwargs.get('endpoint_url')}") from None
    except ClientError as exc:
        code = error_code(exc)
        if code in _BAD_CREDENTIALS:
            raise UserError(f"AWS refused the credentials while {what} ({code}): "
                            "check AWS_PROFILE or the access keys, or log in again") from None
        raise InfrastructureError("aws", f"{what}: {code} {error_message(exc)}".rstrip()) from None
    except (BotoCoreError, ResponseParserError) as exc:
        raise InfrastructureError("aws", f"{what}: {str(exc).splitlines()[0]}") from None
