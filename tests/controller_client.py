"""Drive the controller's API in tests: a Flask test client with bearer tokens."""

from __future__ import annotations

import itertools
import time
from typing import Any

from controller.app import create_app
from controller.auth import issue_token
from controller.db import db

_keys = itertools.count(1)


class Answer:
    """An HTTP answer: status code and decoded JSON."""

    def __init__(self, status: int, body: Any, headers: Any) -> None:
        self.status = status
        self.json = body
        self.headers = headers

    def __repr__(self) -> str:
        return f"Answer({self.status}, {str(self.json)[:300]})"


class Controller:
    """The app plus helpers; ``self.admin`` is an MSP-wide admin token."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.client = app.test_client()
        self.admin = self.issue("admin")

    @classmethod
    def create(cls, **overrides: Any) -> Controller:
        """A controller app configured from the environment (plus ``overrides``)."""
        return cls(create_app(overrides))

    def issue(self, role: str, tenant_id: int | None = None) -> str:
        """A token made directly in the database (as ``token create`` does)."""
        with self.app.app_context(), db.transaction() as session:
            _, text = issue_token(session, name=f"test {role}", role=role,
                                  tenant_id=tenant_id)
        return text

    def call(self, method: str, path: str, token: str | None = None, body: Any = None,
             headers: dict[str, str] | None = None, **kwargs: Any) -> Answer:
        """One request; ``token`` defaults to the admin token."""
        all_headers = {"Authorization": f"Bearer {token or self.admin}", **(headers or {})}
        answer = self.client.open(path, method=method, json=body, headers=all_headers, **kwargs)
        return Answer(answer.status_code, answer.get_json(silent=True), answer.headers)

    def get(self, path: str, token: str | None = None, **kwargs: Any) -> Answer:
        """GET."""
        return self.call("GET", path, token, **kwargs)

    def post(self, path: str, body: Any = None, token: str | None = None,
             **kwargs: Any) -> Answer:
        """POST."""
        return self.call("POST", path, token, body, **kwargs)

    def ok(self, method: str, path: str, body: Any = None, token: str | None = None,
           expect: int | None = None) -> Any:
        """A call that must succeed (2xx, or ``expect``); return its JSON."""
        answer = self.call(method, path, token, body)
        assert (answer.status == expect) if expect else 200 <= answer.status < 300, answer
        return answer.json

    def tenant(self, name: str) -> int:
        """Create a tenant; return its id."""
        return int(self.ok("POST", "/v1/tenants", {"name": name})["id"])

    def site(self, tenant_id: int, name: str) -> int:
        """Create a site; return its id."""
        return int(self.ok("POST", "/v1/sites", {"tenant_id": tenant_id, "name": name})["id"])

    def host(self, site_id: int, name: str, **fields: Any) -> dict[str, Any]:
        """Create a host (an agent host on a documentation address unless told)."""
        body = {"name": name, "site_id": site_id, "address": "192.0.2.10",
                "transport": "agent",
                "agent": {"url": "http://192.0.2.10:8587", "token": "t" * 32}, **fields}
        result: dict[str, Any] = self.ok("POST", "/v1/hosts", body)
        return result

    def start_job(self, body: dict[str, Any], token: str | None = None) -> int:
        """POST /v1/jobs with a fresh Idempotency-Key; return the job id."""
        answer = self.post("/v1/jobs", body, token,
                           headers={"Idempotency-Key": f"test-{next(_keys)}"})
        assert answer.status == 202, answer
        return int(answer.json["id"])

    def wait_job(self, job_id: int, timeout: float = 240, token: str | None = None) -> Any:
        """Poll until the job has finished; return its document."""
        deadline = time.monotonic() + timeout
        doc = None
        while time.monotonic() < deadline:
            doc = self.ok("GET", f"/v1/jobs/{job_id}", token=token)
            if doc["finished_at"] is not None:
                return doc
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} did not finish in {timeout} s: {doc}")
