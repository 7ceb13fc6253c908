"""RELAYFLEET_LOG_FORMAT: one JSON object per line with context fields, secrets redacted."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, g

from controller import logs
from shared.errors import ConfigError

SECRET = "a-controller-secret-key-0123456789"
DB_PASSWORD = "pg-pass-w0rd%2Fx"
ENV = {"RELAYFLEET_SECRET_KEY": SECRET, "RELAYFLEET_SECRET_KEY_OLD": "old-key-abcdefghijklmn",
       "RELAYFLEET_DATABASE_URL": f"postgresql+psycopg://rf:{DB_PASSWORD}@db/relayfleet",
       "RELAYFLEET_BROKER_URL": "redis://:redis-secret-99@redis:6379/0"}


@pytest.fixture
def capture(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing through the JSON handler :func:`logs.dict_config` describes."""
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.ContextFilter())
    logger = logging.getLogger("relayfleet.worker.test-json")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """Every line written, each parsed as JSON (a line that is not fails the test)."""
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_one_object_per_line_with_the_fields(capture: tuple[logging.Logger, io.StringIO]
                                             ) -> None:
    logger, stream = capture
    logger.info("plain %s\nsecond line", "message")
    (entry,) = lines(stream)
    assert entry["level"] == "INFO" and entry["logger"] == "relayfleet.worker.test-json"
    assert entry["message"] == "plain message\nsecond line"
    assert entry["time"].endswith("Z") and "T" in entry["time"]
    assert isinstance(entry["process"], int)
    assert "job_id" not in entry and "host" not in entry and "exception" not in entry


def test_job_host_and_status_come_from_extra_fields_not_the_message(
        capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture
    logger.info("job %s host %s: %s%s", 42, 7, "succeeded", "",
                extra={"job_id": 42, "host": 7, "status": "succeeded"})
    logger.info("unit finished", extra={"job_id": 44, "host": "pbx1", "tenant": 3})
    logger.info("job %s host %s: %s", 5, 6, "failed")  # text alone names nothing
    first, second, third = lines(stream)
    assert (first["job_id"], first["host"], first["status"]) == (42, 7, "succeeded")
    assert (second["job_id"], second["host"], second["tenant"]) == (44, "pbx1", 3)
    assert "status" not in second
    assert "job_id" not in third and "host" not in third


def test_exceptions_are_kept_as_text(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("job %s host %s: unexpected error", 1, 2,
                         extra={"job_id": 1, "host": 2})
    (entry,) = lines(stream)
    assert entry["level"] == "ERROR" and entry["job_id"] == 1
    assert "Traceback" in entry["exception"] and "ValueError: boom" in entry["exception"]


def test_the_controllers_secrets_never_appear(capture: tuple[logging.Logger, io.StringIO]
                                              ) -> None:
    logger, stream = capture
    logger.info("connecting to %s with %s", ENV["RELAYFLEET_DATABASE_URL"], SECRET)
    logger.info("broker %s", ENV["RELAYFLEET_BROKER_URL"], extra={"host": SECRET})
    try:
        raise RuntimeError(f"old key old-key-abcdefghijklmn and {DB_PASSWORD}")
    except RuntimeError:
        logger.exception("failed")
    text = stream.getvalue()
    for secret in (SECRET, "old-key-abcdefghijklmn", DB_PASSWORD, "pg-pass-w0rd/x",
                   "redis-secret-99"):
        assert secret not in text
    assert text.count("[redacted]") >= 6


def test_the_tenant_of_an_api_request(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture
    app = Flask("t")

    class Who:
        tenant_id = 9

    with app.test_request_context("/v1/hosts"):
        g.principal = Who()
        logger.info("GET /v1/hosts 200")
    with app.test_request_context("/v1/hosts"):
        logger.info("GET /v1/hosts 401")
    tenant_call, anonymous = lines(stream)
    assert tenant_call["tenant"] == 9 and "tenant" not in anonymous


def test_the_format_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert logs.log_format({}) == "text"
    assert logs.log_format({"RELAYFLEET_LOG_FORMAT": " JSON "}) == "json"
    with pytest.raises(ConfigError, match="text or json"):
        logs.log_format({"RELAYFLEET_LOG_FORMAT": "xml"})
    config = logs.dict_config("INFO", "json")
    assert config["formatters"]["relayfleet"]["()"] is logs.JsonFormatter
    # gunicorn's loggers hand their records to the root handler (one format for all)
    assert config["loggers"]["gunicorn.error"] == {"level": "INFO", "handlers": [],
                                                   "propagate": True}
    assert logs.dict_config("INFO", "text")["formatters"]["relayfleet"]["()"] is (
        logs.TextFormatter)


def test_text_stays_the_default_line_and_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAYFLEET_SECRET_KEY", SECRET)
    record = logging.LogRecord("relayfleet.controller", logging.INFO, __file__, 1,
                               "key %s", (SECRET,), None)
    line = logs.TextFormatter().format(record)
    assert line.endswith(" INFO relayfleet.controller key [redacted]")


def test_the_cli_refuses_an_unknown_format(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from controller.cli import main

    monkeypatch.setenv("RELAYFLEET_LOG_FORMAT", "yaml")
    assert main(["init-db"]) == 2
    assert "RELAYFLEET_LOG_FORMAT must be text or json" in capsys.readouterr().err
