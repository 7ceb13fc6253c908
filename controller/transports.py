"""How a worker reaches one host: through its agent (HTTP) or over SSH.

Both transports take an action name and its typed request (see :mod:`shared.actions`) and
return the same :class:`~shared.results.OperationResult`, built from the agent's answer
document for the action either way, so a job's results look alike whichever way the host
is managed. Agent calls go through :mod:`controller.egress` (policy, pinned address and
certificate, whole-request deadline, body cap). Third-party errors are mapped here to the shared
exception tree: :class:`HostUnreachable` when the host could not be reached at all.
"""

from __future__ import annotations

import abc
import functools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from controller.egress import (
    Answer,
    AnswerTooLarge,
    CertificateMismatch,
    CertificateNotTrusted,
    DeadlineExceeded,
    EgressError,
    EgressPolicy,
    HttpClient,
    TlsTrust,
    normalise_fingerprint,
)
from shared.actions import Request, action_named, result_from_document
from shared.errors import (
    ChangeInProgress,
    CommandTimeout,
    HostKeyMismatch,
    HostUnreachable,
    OperationError,
)
from shared.mta import detect_kind, operations_for
from shared.mta_kind import MTA_HEADER, resolve_profile
from shared.profile import PROFILE_KINDS, HostProfile
from shared.results import OperationResult

T = TypeVar("T")
#: a host's pin as the transport compares it, worked out once per stored text (the
#: inventory stores it normalised already; every call of every job would redo it)
_pin = functools.lru_cache(maxsize=4096)(normalise_fingerprint)
#: how long to keep asking an agent that is busy with another change (409)
_BUSY_RETRY_S = 2.0
#: the largest agent answer read (a long log or queue fits many times over)
MAX_AGENT_ANSWER_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class HostSpec:
    """Everything needed to reach one host, secrets decrypted (lives only in a worker)."""

    host_id: int
    name: str
    address: str
    transport: str
    #: as configured: sendmail, postfix or auto
    mta_kind: str = "sendmail"
    mta_flavour: str = "debian"
    mta_overrides: dict[str, Any] = field(default_factory=dict)
    #: the kind the host was last found running (an ``auto`` host over SSH runs as it)
    mta_detected_kind: str | None = None
    agent_url: str | None = None
    agent_token: str | None = field(default=None, repr=False)
    agent_ca_cert: str | None = None
    #: SHA-256 of the agent's DER certificate; when set, it alone decides trust
    agent_tls_fingerprint: str | None = None
    #: plain http:// to the agent allowed (the host said so explicitly)
    agent_insecure_http: bool = False
    ssh_port: int = 22
    ssh_username: str | None = None
    ssh_private_key: str | None = field(default=None, repr=False)
    ssh_passphrase: str | None = field(default=None, repr=False)
    ssh_password: str | None = field(default=None, repr=False)
    ssh_host_key: str | None = None
    ssh_sudo: bool = False


@dataclass(frozen=True)
class AgentSwitch:
    """What install_agent changed in a host's record: the agent it reaches, its pinned
    certificate and, when the installer wrote or rotated it, its new token (sealed)."""

    url: str
    fingerprint: str
    #: the agent's new token, sealed; None when the agent kept the one the controller has
    sealed_token: str | None
    #: the agent answered from the worker: the host moves to it. False: only the new token
    #: is kept (the agent already has it), the host stays on its transport
    checked: bool


class HostTransport(abc.ABC):
    """Runs one action on one host; a context manager that closes what it opened."""

    #: the MTA kind the action drove the host as, once known (SSH: the configured kind, or
    #: the one detected for ``auto``; agent: the kind its answer's X-Relayfleet-Mta header
    #: names); None when the transport cannot tell
    mta_kind: str | None = None
    #: what the run changed in the host's record, applied by the ledger with the unit's
    #: result (install_agent's switch to the agent); None for an MTA operation
    agent_switch: AgentSwitch | None = None

    def __enter__(self) -> HostTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abc.abstractmethod
    def run(self, action: str, request: Request, *, dry_run: bool,
            timeout_s: float) -> OperationResult:
        """Run ``action`` with its typed ``request`` within ``timeout_s`` seconds."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections (idempotent)."""

    def cut(self) -> None:
        """Stop talking to the host now, from another thread (its unit was lost); what is
        in flight fails and nothing more is sent."""
        self.close()


class SshTransport(HostTransport):
    """The shared operations over paramiko, with a pool of warm connections."""

    def __init__(self, spec: HostSpec, pool: Any, lock_owner: str | None = None) -> None:
        from shared.ssh import SshExecutor, SshTarget

        self.spec = spec
        self.lock_owner = lock_owner
        target = SshTarget(spec.address, spec.ssh_username or "root", spec.ssh_host_key,
                           port=spec.ssh_port, private_key=spec.ssh_private_key,
                           passphrase=spec.ssh_passphrase, password=spec.ssh_password,
                           sudo=spec.ssh_sudo, connect_timeout_s=10.0, label=spec.name)
        self.executor = SshExecutor(target, pool)
        self._cut = threading.Event()

    def run(self, action: str, request: Request, *, dry_run: bool,
            timeout_s: float) -> OperationResult:
        """Run the operation; past ``timeout_s`` the connection is cut and the host fails.

        The result goes through the agent's answer document, so it has the same shape as
        one from :class:`AgentTransport`.
        """
        entry = action_named(action)
        result = self._boxed(timeout_s, lambda: entry.run(
            operations_for(self.executor, self._profile(), self.lock_owner), request,
            dry_run=dry_run))
        return result_from_document(action, entry.document(result))

    def _boxed(self, timeout_s: float, work: Callable[[], T]) -> T:
        """``work()``, with the connection cut past ``timeout_s`` (the host then fails)."""
        timer = threading.Timer(timeout_s, self.cut)
        timer.daemon = True
        timer.start()
        try:
            done = work()
        except Exception as exc:
            if self._cut.is_set():
                raise self._timed_out(timeout_s) from exc
            raise
        finally:
            timer.cancel()
        if self._cut.is_set():
            # The operation caught the cut itself; nothing after it ran on the host.
            raise self._timed_out(timeout_s)
        return done

    def _profile(self) -> HostProfile:
        """The host's profile; for kind ``auto``, of the kind detected before (remembered
        in the inventory) or detected now, at first contact (one shell command)."""
        spec = self.spec
        profile = resolve_profile(spec.mta_kind, spec.mta_flavour, spec.mta_overrides,
                                  lambda: spec.mta_detected_kind or detect_kind(self.executor))
        self.mta_kind = profile.kind
        return profile

    def _timed_out(self, timeout_s: float) -> CommandTimeout:
        return CommandTimeout(f"{self.spec.name}: cut after the job's timeout_s "
                              f"({timeout_s:g} s); a change may be half done: the next "
                              "attempt on this host takes over its lock and finishes it")

    def cut(self) -> None:
        """Cut the connection: the command in flight fails and nothing more runs."""
        self._cut.set()
        self.executor.abort()

    def close(self) -> None:
        """Give the connection back to the pool."""
        self.executor.close()


class AgentTransport(HostTransport):
    """The host's relayfleet agent over HTTPS (HTTP only when the host says so),
    authenticated with the host's token, through the egress policy."""

    def __init__(self, spec: HostSpec, http: HttpClient | None = None) -> None:
        self.spec = spec
        self.base = (spec.agent_url or "").rstrip("/")
        # Kept connections: the next call to this agent skips the TCP and TLS handshakes
        # (every agent route is idempotent, which a kept connection's resend needs).
        self.http = http or HttpClient(EgressPolicy.from_environ(), keep_alive=True)
        pin = spec.agent_tls_fingerprint
        self.tls = TlsTrust(fingerprint=_pin(pin) if pin else None,
                            ca_cert=spec.agent_ca_cert)

    def _refuse_plain_http(self) -> None:
        # The token and SMTP AUTH passwords travel in this request: in clear only on the
        # host's explicit say-so (a lab, a loopback agent).
        if urlsplit(self.base).scheme != "https" and not self.spec.agent_insecure_http:
            raise HostUnreachable(f"{self.spec.name}: refused to send the agent's token over "
                                  "plain HTTP: use an https agent URL (pin agent."
                                  "tls_fingerprint) or set agent.insecure_http: true")

    def _call(self, method: str, path: str, *, json_body: Any = None,
              params: dict[str, Any] | None = None, timeout_s: float) -> dict[str, Any]:
        self._refuse_plain_http()
        deadline = time.monotonic() + timeout_s
        headers = {"Authorization": f"Bearer {self.spec.agent_token}",
                   "Accept": "application/json", "User-Agent": "relayfleet-controller"}
        body = None
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        name = self.spec.name
        while True:
            try:
                answer = self.http.request(
                    method, self.base + path, params=params, headers=headers, body=body,
                    deadline_s=max(0.1, deadline - time.monotonic()),
                    max_body=MAX_AGENT_ANSWER_BYTES, tls=self.tls)
            except CertificateMismatch as exc:
                raise HostKeyMismatch(f"{name}: {exc}; if the agent's certificate was "
                                      "replaced, pin the new fingerprint "
                                      "(relayfleet-agent check prints it)") from None
            except CertificateNotTrusted as exc:
                raise HostUnreachable(f"{name}: {exc}: pin agent.tls_fingerprint (relayfleet-"
                                      "agent check prints it) or give agent.ca_cert") from None
            except DeadlineExceeded:
                raise CommandTimeout(f"{name}: the agent did not answer within "
                                     f"{timeout_s:g} s") from None
            except AnswerTooLarge as exc:
                raise OperationError(f"{name}: {exc}") from None
            except EgressError as exc:
                # "refused by egress policy" or "unreachable": the detail is in the log.
                raise HostUnreachable(f"{name}: cannot reach the agent: {exc}") from None
            if answer.status == 409 and time.monotonic() + _BUSY_RETRY_S < deadline:
                time.sleep(_BUSY_RETRY_S)
                continue
            return self._decode(answer)

    def _decode(self, answer: Answer) -> dict[str, Any]:
        kind = answer.headers.get(MTA_HEADER.lower())
        if kind in PROFILE_KINDS:
            self.mta_kind = kind
        try:
            doc = json.loads(answer.body)
        except ValueError:
            doc = None
        if answer.status == 200 and isinstance(doc, dict):
            return doc
        message = doc.get("message") if isinstance(doc, dict) else None
        if answer.status == 401:
            raise OperationError(f"{self.spec.name}: the agent refused the stored token "
                                 "(401): update the host's agent.token")
        if answer.status == 409:
            raise ChangeInProgress(f"{self.spec.name}: {message or 'another change is running'}")
        raise OperationError(f"{self.spec.name}: the agent answered {answer.status}"
                             + (f": {str(message)[:200]}" if message else ""))

    def health(self, timeout_s: float) -> dict[str, Any]:
        """The agent's ``GET /v1/health`` answer (status and version), its certificate
        checked as for every call."""
        return self._call("GET", "/v1/health", timeout_s=timeout_s)

    def run(self, action: str, request: Request, *, dry_run: bool,
            timeout_s: float) -> OperationResult:
        """Call the agent route for ``action`` and turn its answer into a result."""
        entry = action_named(action)
        route = entry.route
        sent = entry.http_input(request, dry_run)
        doc = self._call(route.method, route.path, timeout_s=timeout_s,
                         json_body=sent if route.location == "json" else None,
                         params=sent if route.location == "query" else None)
        return result_from_document(action, doc)

    def close(self) -> None:
        """Nothing to release: a call's connection is closed, or kept in the egress pool,
        when the call ends."""


def transport_for(spec: HostSpec, ssh_pool: Any = None, http: HttpClient | None = None,
                  lock_owner: str | None = None) -> HostTransport:
    """The transport a host is managed with; ``lock_owner`` names the change on the host
    (over SSH, a retry of the same owner may take over the lock a dead attempt left)."""
    if spec.transport == "ssh":
        return SshTransport(spec, ssh_pool, lock_owner)
    return AgentTransport(spec, http)
