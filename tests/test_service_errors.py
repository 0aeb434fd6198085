"""Each service module turns its client library's exceptions into the pipeline's ServiceError
with the operation, the target, the service's code and what it means (kind)."""
from __future__ import annotations

import json

import pytest

from imgpipe import aws, kafka, meili, s3
from imgpipe.errors import DENIED, FAILED, NOT_FOUND, REJECTED, UNAVAILABLE, InfrastructureError, UserError
from imgpipe.settings import Settings

SETTINGS = Settings(meili_url="http://127.0.0.1:7700")


def client_error(code: str, status: int, message: str = "it went wrong"):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


@pytest.mark.parametrize("code, status, kind, missing_object, missing_bucket", [
    ("NoSuchKey", 404, NOT_FOUND, True, False),
    ("404", 404, NOT_FOUND, True, False),
    ("NoSuchBucket", 404, NOT_FOUND, False, True),
    ("AccessDenied", 403, DENIED, False, False),
    ("InvalidAccessKeyId", 403, DENIED, False, False),
    ("InvalidObjectState", 403, REJECTED, False, False),
    ("SlowDown", 503, UNAVAILABLE, False, False),
    ("InternalError", 500, UNAVAILABLE, False, False),
    ("RequestTimeout", 400, UNAVAILABLE, False, False),
])
def test_s3_codes_are_sorted_into_kinds(code, status, kind, missing_object, missing_bucket):
    error = s3.translate(client_error(code, status), "fetching", "images", "raw/a b.jpg")
    assert (error.kind, error.missing_object, error.missing_bucket) == (kind, missing_object, missing_bucket)
    assert (error.code, error.status, error.bucket, error.key) == (code, status, "images", "raw/a b.jpg")
    assert isinstance(error, InfrastructureError) and error.service == "s3"
    assert str(error) == f"s3: fetching s3://images/raw/a b.jpg failed: {code} it went wrong"


def test_s3_transport_failures_are_outages_with_context():
    from botocore.exceptions import EndpointConnectionError

    with pytest.raises(s3.S3Error) as caught, s3.errors("storing", "images", "processed/x.jpg"):
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
    assert caught.value.kind == UNAVAILABLE and caught.value.transient
    assert "storing s3://images/processed/x.jpg failed: EndpointConnectionError" in str(caught.value)
    with pytest.raises(s3.S3Error) as caught, s3.errors("reading", "images", "k"):
        raise ConnectionResetError("reset by peer")
    assert caught.value.code == "ConnectionResetError" and caught.value.transient


def meili_api_error(status: int, code: str, message: str):
    import requests
    from meilisearch.errors import MeilisearchApiError

    response = requests.Response()
    response.status_code = status
    response._content = json.dumps({"message": message, "code": code, "type": "invalid_request",
                                    "link": "https://docs.meilisearch.com/errors#" + code}).encode()
    return MeilisearchApiError("error", response)


@pytest.mark.parametrize("status, code, kind", [
    (404, "index_not_found", NOT_FOUND),
    (400, "invalid_search_filter", REJECTED),
    (403, "invalid_api_key", DENIED),
    (401, "missing_authorization_header", DENIED),
    (503, "", UNAVAILABLE),
])
def test_meilisearch_errors_are_sorted_into_kinds(status, code, kind):
    error = meili.translate(meili_api_error(status, code, "Index `x` not found.\n1:2 bad"), "searching",
                            SETTINGS, "x")
    assert (error.kind, error.code, error.status, error.index) == (kind, code, status, "x")
    assert error.message == "Index `x` not found. (characters 1-2 of: bad)"


def test_an_unreachable_meilisearch_says_what_to_check():
    from meilisearch.errors import MeilisearchCommunicationError

    with pytest.raises(meili.MeiliError) as caught, meili.errors("indexing 3 documents", SETTINGS, "images"):
        raise MeilisearchCommunicationError("Connection refused")
    assert caught.value.kind == UNAVAILABLE
    assert str(caught.value) == ("meilisearch: cannot reach http://127.0.0.1:7700 (connection failed; is "
                                 "MeiliSearch running? `make up` starts the local one)")


def test_reading_scripts_turn_refused_requests_into_user_errors():
    bad_filter = meili.translate(meili_api_error(400, "invalid_search_filter", "Was expecting a value"), "searching",
                                 SETTINGS, "x")
    assert str(meili.as_user_error(bad_filter)) == "invalid filter: Was expecting a value"
    refused = meili.translate(meili_api_error(403, "invalid_api_key", "The key is invalid."), "searching", SETTINGS)
    assert isinstance(meili.as_user_error(refused), UserError)
    assert "MEILI_SEARCH_KEY" in str(meili.as_user_error(refused))
    outage = meili.translate(meili_api_error(502, "", "bad gateway"), "searching", SETTINGS)
    assert meili.as_user_error(outage) is outage


def test_a_failed_task_is_a_failed_meili_error_with_the_tasks_code():
    class Task:
        status, error = "failed", {"code": "invalid_document_id", "message": "Document identifier `a b` is invalid."}

    class Client:
        def wait_for_task(self, uid, **_):
            return Task()

    with pytest.raises(meili.MeiliError) as caught:
        meili.wait_for_task(Client(), SETTINGS, 7, "indexing 2 documents", "images")
    assert (caught.value.kind, caught.value.code) == (FAILED, "invalid_document_id")
    assert "task 7 failed" in str(caught.value)


@pytest.mark.parametrize("name, kind", [
    ("UNKNOWN_TOPIC_OR_PART", NOT_FOUND), ("TOPIC_AUTHORIZATION_FAILED", DENIED),
    ("MSG_SIZE_TOO_LARGE", REJECTED), ("_TRANSPORT", UNAVAILABLE), ("_ALL_BROKERS_DOWN", UNAVAILABLE),
])
def test_kafka_errors_are_sorted_into_kinds(name, kind):
    from confluent_kafka import KafkaError, KafkaException

    code = getattr(KafkaError, name)
    error = kafka.translate(KafkaException(KafkaError(code)), "committing offsets")
    assert (error.code, error.kind) == (name, kind)
    assert str(error).startswith(f"kafka: committing offsets failed: {name}")


def test_aws_control_plane_errors_name_the_service():
    from botocore.exceptions import NoCredentialsError

    with pytest.raises(aws.AwsError) as caught, aws.errors("emr", "describing cluster", "j-1"):
        raise client_error("ValidationException", 400, "Cluster id 'j-1' is not valid.")
    assert (caught.value.service, caught.value.kind) == ("emr", REJECTED)
    with pytest.raises(aws.AwsError) as caught, aws.errors("emr", "adding a step"):
        raise NoCredentialsError()
    assert caught.value.kind == DENIED and "no AWS credentials" in caught.value.message
