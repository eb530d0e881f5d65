"""Credentials never reach a log line: the redacting filter on the CLI's handlers."""

from __future__ import annotations

import logging

from pipelines.cli import RedactingFilter, secrets_of


def test_secrets_of_storage_options_at_any_depth():
    options = {"key": "AKIAEXAMPLEKEY000001", "secret": "s3cr3t-value", "anon": False,
               "client_kwargs": {"endpoint_url": "http://minio:9000", "aws_session_token": "tok-123456"},
               "config_kwargs": {"retries": {"max_attempts": 5}}}
    assert sorted(secrets_of(options)) == ["AKIAEXAMPLEKEY000001", "s3cr3t-value", "tok-123456"]
    gcs = {"token": {"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\nMIIE",
                     "client_email": "a@b.iam"}}
    assert secrets_of(gcs) == ["-----BEGIN PRIVATE KEY-----\nMIIE"]


def test_short_values_and_parts_of_words_are_left_alone():
    """A MinIO user named 'opso' (docker-compose's) must not blank out every 'opso' in the log."""
    f = RedactingFilter(["opso", "minio-secret-1"])
    record = logging.LogRecord("opso", logging.INFO, __file__, 1, "%s", (
        "s3://opso/runs/a is in use by another opso run; minio-secret-1 leaked; xminio-secret-1y stays",), None)
    f.filter(record)
    assert record.getMessage() == "s3://opso/runs/a is in use by another opso run; *** leaked; xminio-secret-1y stays"
    azure = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=abc+def/ghi==;EndpointSuffix=core.windows.net"
    record = logging.LogRecord("adlfs", logging.DEBUG, __file__, 1, "%s", (azure,), None)
    f.filter(record)
    assert "abc+def" not in record.getMessage() and "AccountKey=***" in record.getMessage()


def test_the_filter_redacts_values_and_shapes():
    f = RedactingFilter(["s3cr3t-value", "my-minio-user"])
    lines = {
        "Authorization: AWS4-HMAC-SHA256 Credential=my-minio-user/20261206/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=0dea8dd0d933f6007f77b34db2d17733":
            "Authorization: AWS4-HMAC-SHA256 Credential=***/20261206/us-east-1/s3/aws4_request, "
            "SignedHeaders=host;x-amz-date, Signature=***",
        "key id ASIAZZZZZZZZZZZZZZZZ in a message": "key id *** in a message",
        "{'aws_secret_access_key': 'abc/def+ghi'}": "{'aws_secret_access_key': '***'}",
        "secret is s3cr3t-value": "secret is ***",
        "X-Amz-Security-Token: FwoGZXIvYXdzE": "X-Amz-Security-Token: ***",
    }
    for line, expected in lines.items():
        record = logging.LogRecord("botocore.auth", logging.DEBUG, __file__, 1, "%s", (line,), None)
        assert f.filter(record)
        assert record.getMessage() == expected
