"""The controller's REST API over httpx: bearer token, time-outs, retries of transient
failures, and the API's error envelope mapped to :mod:`controller.client.errors`."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx

from controller.client.config import Connection
from controller.client.errors import ApiRefused, ApiUnreachable

#: answers worth another try: the controller (or its proxy) was briefly unavailable
TRANSIENT_STATUSES = frozenset({502, 503, 504})
PAGE_LIMIT = 500


def new_idempotency_key() -> str:
    """A fresh key for one invocation's job (its network retries reuse it)."""
    return f"relayfleet-cli-{uuid.uuid4()}"


class ApiClient:
    """One controller: connects on first use, closes idempotently, retries what is safe."""

    def __init__(self, connection: Connection, *, timeout_s: float = 30.0, retries: int = 3,
                 verify: str | bool = True, transport: httpx.BaseTransport | None = None,
                 user_agent: str = "relayfleet-cli") -> None:
        self.connection = connection
        self.timeout_s = timeout_s
        self.retries = retries
        self._verify = verify
        self._transport = transport
        self._user_agent = user_agent
        self._client: httpx.Client | None = None

    def with_connection(self, connection: Connection) -> ApiClient:
        """A client for another controller URL or token, with the same settings and
        transport (``login`` checks a new token before storing it)."""
        return ApiClient(connection, timeout_s=self.timeout_s, retries=self.retries,
                         verify=self._verify, transport=self._transport,
                         user_agent=self._user_agent)

    @property
    def api(self) -> str:
        """The controller's base URL."""
        return self.connection.api

    def _http(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(
                base_url=self.connection.api, timeout=self.timeout_s, verify=self._verify,
                transport=self._transport, follow_redirects=False,
                headers={"Authorization": f"Bearer {self.connection.token}",
                         "User-Agent": self._user_agent, "Accept": "application/json"})
        return self._client

    def close(self) -> None:
        """Close the connection pool (safe to call twice)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(self, method: str, path: str, *, json: Any = None,
                params: dict[str, Any] | None = None,
                headers: dict[str, str] | None = None) -> Any:
        """One call; the decoded JSON answer (``None`` for 204). Retries connection
        failures and 502/503/504 when repeating is safe: reads, calls carrying an
        Idempotency-Key, and anything whose request never left."""
        safe = method == "GET" or bool(headers and "Idempotency-Key" in headers)
        attempt = 0
        while True:
            attempt += 1
            try:
                answer = self._http().request(method, path, json=json, params=params,
                                              headers=headers)
            except httpx.TransportError as exc:
                never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if attempt <= self.retries and (safe or never_sent):
                    time.sleep(0.3 * 2 ** (attempt - 1))
                    continue
                raise ApiUnreachable(
                    f"controller unreachable at {self.api}: {_reason(exc)}",
                    hint="check --api / RELAYFLEET_API_URL and that `relayfleet-controller "
                         "serve` runs there") from exc
            if answer.status_code in TRANSIENT_STATUSES and safe and attempt <= self.retries:
                time.sleep(0.3 * 2 ** (attempt - 1))
                continue
            return _decode(answer, self.api)

    def get(self, path: str, **params: Any) -> Any:
        """GET ``path`` with query ``params`` (``None`` values left out)."""
        return self.request("GET", path, params={k: _query(v) for k, v in params.items()
                                                 if v is not None})

    def post(self, path: str, body: Any = None, *, idempotency_key: str | None = None) -> Any:
        """POST a JSON body (with an Idempotency-Key when given)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self.request("POST", path, json=body, headers=headers)

    def put(self, path: str, body: Any) -> Any:
        """PUT a JSON body."""
        return self.request("PUT", path, json=body)

    def patch(self, path: str, body: Any) -> Any:
        """PATCH a JSON body."""
        return self.request("PATCH", path, json=body)

    def delete(self, path: str) -> Any:
        """DELETE."""
        return self.request("DELETE", path)

    def items(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Every item of a paged list, page after page."""
        offset = 0
        while True:
            page = self.get(path, limit=PAGE_LIMIT, offset=offset, **params)
            yield from page["items"]
            offset += len(page["items"])
            if not page["items"] or offset >= page.get("total", offset):
                return


def _query(value: Any) -> Any:
    return ("true" if value else "false") if isinstance(value, bool) else value


def _reason(exc: httpx.TransportError) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer in time ({text})"
    return text


def _decode(answer: httpx.Response, api: str) -> Any:
    """The answer's JSON, or :class:`ApiRefused` with the API's own message."""
    if answer.status_code == 204:
        return None
    try:
        document = answer.json()
    except ValueError:
        document = None
    if answer.is_success:
        if document is None:
            raise ApiRefused(answer.status_code,
                             f"{api} answered {answer.status_code} without JSON: is this a "
                             "relayfleet controller?")
        return document
    if isinstance(document, dict) and isinstance(document.get("message"), str):
        message, errors = document["message"], document.get("errors") or {}
    else:
        message, errors = f"HTTP {answer.status_code} {answer.reason_phrase}", {}
    hint = None
    if answer.status_code == 401:
        hint = "check the token (relayfleet login, --token-file or RELAYFLEET_TOKEN)"
    raise ApiRefused(answer.status_code, message, errors, hint=hint)
