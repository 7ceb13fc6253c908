"""The controller's REST API over httpx: bearer token, time-outs, retries of transient
failures, and the API's error envelope mapped to :mod:`controller.client.errors`."""

from __future__ import annotations

import ssl
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
#: a keyed request answered 409 "still being handled" is asked again this many times,
#: waiting 0.5 s, 1 s, 2 s, then at most CONFLICT_WAIT_MAX_S between tries (about 20 s)
CONFLICT_RETRIES = 7
CONFLICT_WAIT_MAX_S = 4.0


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
                params: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
                timeout_s: float | None = None, retries: int | None = None,
                busy_retries: int = CONFLICT_RETRIES) -> Any:
        """One call; the decoded JSON answer (``None`` for 204). Retries connection
        failures and 502/503/504 when repeating is safe: reads, calls carrying an
        Idempotency-Key, and anything whose request never left. A keyed call the
        controller is still handling (409) is asked again a few times, waiting longer
        each time."""
        keyed = bool(headers and "Idempotency-Key" in headers)
        safe = method == "GET" or keyed
        retries = self.retries if retries is None else retries
        attempt = busy = 0
        #: an earlier attempt may have reached the controller (only its answer was lost)
        maybe_sent = False
        while True:
            attempt += 1
            try:
                answer = self._http().request(method, path, json=json, params=params,
                                              headers=headers,
                                              timeout=timeout_s or self.timeout_s)
            except httpx.TransportError as exc:
                never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout
                                        | httpx.UnsupportedProtocol)
                maybe_sent = maybe_sent or not never_sent
                hopeless = isinstance(exc, httpx.UnsupportedProtocol) or _untrusted(exc)
                if attempt <= retries and (safe or never_sent) and not hopeless:
                    time.sleep(0.3 * 2 ** (attempt - 1))
                    continue
                raise self._unreachable(method, exc, maybe_done=maybe_sent) from exc
            if answer.status_code in TRANSIENT_STATUSES and safe and attempt <= retries:
                time.sleep(0.3 * 2 ** (attempt - 1))
                continue
            if keyed and answer.status_code == 409 and busy < busy_retries \
                    and _still_handled(answer):
                # the first request under this key is still being worked on (a retry
                # after a lost answer): its answer will be stored under the key
                busy += 1
                time.sleep(min(CONFLICT_WAIT_MAX_S, 0.5 * 2 ** (busy - 1)))
                continue
            return _decode(answer, self.api)

    def _unreachable(self, method: str, exc: httpx.TransportError, *,
                     maybe_done: bool) -> ApiUnreachable:
        """The error for a call that got no answer, with what to check next."""
        reason = _reason(exc)
        if _untrusted(exc):
            return ApiUnreachable(
                f"cannot trust the controller's certificate at {self.api}: {reason}",
                hint="give the CA that signed it: --ca-file PEM (or RELAYFLEET_CA_FILE)",
                reason=reason)
        if isinstance(exc, httpx.UnsupportedProtocol):
            return ApiUnreachable(f"{self.api} is not an http:// or https:// URL",
                                  hint="e.g. --api https://relayfleet.example.net",
                                  reason=reason)
        if method != "GET" and maybe_done:
            return ApiUnreachable(
                f"no answer from the controller at {self.api}: {reason}; the request may "
                "have been carried out", hint="check before repeating it", reason=reason,
                maybe_done=True)
        return ApiUnreachable(
            f"controller unreachable at {self.api}: {reason}",
            hint="check --api / RELAYFLEET_API_URL and that `relayfleet-controller serve` "
                 "runs there", reason=reason)

    def get(self, path: str, **params: Any) -> Any:
        """GET ``path`` with query ``params`` (``None`` values left out)."""
        return self.request("GET", path, params={k: _query(v) for k, v in params.items()
                                                 if v is not None})

    def post(self, path: str, body: Any = None, *, idempotency_key: str | None = None,
             timeout_s: float | None = None, retries: int | None = None,
             busy_retries: int = CONFLICT_RETRIES) -> Any:
        """POST a JSON body (with an Idempotency-Key when given)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self.request("POST", path, json=body, headers=headers, timeout_s=timeout_s,
                            retries=retries, busy_retries=busy_retries)

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


def _untrusted(exc: BaseException) -> bool:
    """Whether a failure is the controller's TLS certificate not verifying (retrying does
    not help; --ca-file does)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError) or \
                "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _still_handled(answer: httpx.Response) -> bool:
    """Whether a 409 is the Idempotency-Key's "still being handled" (not a conflict of the
    request itself, such as a name already taken)."""
    try:
        document = answer.json()
    except ValueError:
        return False
    return isinstance(document, dict) and "still being handled" in str(document.get("message"))


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
