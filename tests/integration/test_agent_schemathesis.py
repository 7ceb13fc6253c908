"""schemathesis against the agent's /openapi.json: no 5xx, answers match their schemas."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.lab.lab import LabHost
from tests.schemathesis_run import run_schemathesis

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def test_schemathesis_finds_no_server_errors(make_host: Callable[..., LabHost],
                                             tmp_path: Path) -> None:
    host = make_host("debian")
    token = secrets.token_urlsafe(32)
    url = host.start_agent(token)
    out = run_schemathesis(url, token, tmp_path,
                           checks="not_a_server_error,response_schema_conformance,"
                                  "content_type_conformance,status_code_conformance",
                           max_examples=15, request_timeout=240)
    assert "No issues found" in out or "passed" in out, out[-3000:]
    # It did exercise the API: the changes it sent left a consistent config behind.
    cf = (host.mail_dir / "sendmail.cf").read_text()
    assert cf.count("\nDS") == 1
