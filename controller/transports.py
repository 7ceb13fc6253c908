"""How a worker reaches one host: through its agent (HTTP) or over SSH.

Both transports take an action name and its typed request (see :mod:`shared.actions`) and
return the same :class:`~shared.results.OperationResult`, built from the agent's answer
document for the action either way, so a job's results look alike whichever way the host
is managed. Third-party errors (requests, paramiko) are mapped here to the shared
exception tree: :class:`HostUnreachable` when the host could not be reached at all.
"""

from __future__ import annotations

import abc
import contextlib
import os
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests

from shared.actions import Request, action_named, result_from_document
from shared.errors import ChangeInProgress, CommandTimeout, HostUnreachable, OperationError
from shared.mta import operations_for
from shared.profile import build_profile
from shared.results import OperationResult

#: how long to keep asking an agent that is busy with another change (409)
_BUSY_RETRY_S = 2.0


@dataclass(frozen=True)
class HostSpec:
    """Everything needed to reach one host, secrets decrypted (lives only in a worker)."""

    host_id: int
    name: str
    address: str
    transport: str
    mta_kind: str = "sendmail"
    mta_flavour: str = "debian"
    mta_overrides: dict[str, Any] = field(default_factory=dict)
    agent_url: str | None = None
    agent_token: str | None = field(default=None, repr=False)
    agent_ca_cert: str | None = None
    ssh_port: int = 22
    ssh_username: str | None = None
    ssh_private_key: str | None = field(default=None, repr=False)
    ssh_passphrase: str | None = field(default=None, repr=False)
    ssh_password: str | None = field(default=None, repr=False)
    ssh_host_key: str | None = None
    ssh_sudo: bool = False


class HostTransport(abc.ABC):
    """Runs one action on one host; a context manager that closes what it opened."""

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

    def run(self, action: str, request: Request, *, dry_run: bool,
            timeout_s: float) -> OperationResult:
        """Run the operation; past ``timeout_s`` the connection is cut and the host fails.

        The result goes through the agent's answer document, so it has the same shape as
        one from :class:`AgentTransport`.
        """
        entry = action_named(action)
        profile = build_profile(self.spec.mta_kind, self.spec.mta_flavour,
                                self.spec.mta_overrides)
        ops = operations_for(self.executor, profile, self.lock_owner)
        expired = threading.Event()

        def cut() -> None:
            expired.set()
            self.executor.abort()

        timer = threading.Timer(timeout_s, cut)
        timer.daemon = True
        timer.start()
        try:
            result = entry.run(ops, request, dry_run=dry_run)
        except Exception as exc:
            if expired.is_set():
                raise CommandTimeout(f"{self.spec.name}: no answer within the job's "
                                     f"timeout_s ({timeout_s:g} s)") from exc
            raise
        finally:
            timer.cancel()
        return result_from_document(action, entry.document(result))

    def close(self) -> None:
        """Give the connection back to the pool."""
        self.executor.close()


class AgentTransport(HostTransport):
    """The host's relayfleet agent over HTTP(S), authenticated with the host's token."""

    def __init__(self, spec: HostSpec, session: requests.Session | None = None) -> None:
        self.spec = spec
        self.base = (spec.agent_url or "").rstrip("/")
        self.session = session or requests.Session()
        self._own_session = session is None
        self._ca_file: str | None = None
        if spec.agent_ca_cert:
            fd, self._ca_file = tempfile.mkstemp(prefix="relayfleet-ca-", suffix=".pem")
            with os.fdopen(fd, "w") as handle:
                handle.write(spec.agent_ca_cert)

    def _call(self, method: str, path: str, *, json_body: Any = None,
              params: dict[str, Any] | None = None, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = max(1.0, deadline - time.monotonic())
            try:
                answer = self.session.request(
                    method, self.base + path, json=json_body, params=params,
                    headers={"Authorization": f"Bearer {self.spec.agent_token}"},
                    timeout=(min(10.0, remaining), remaining), allow_redirects=False,
                    verify=self._ca_file or True)
            except requests.exceptions.SSLError as exc:
                raise HostUnreachable(f"{self.spec.name}: the agent's TLS certificate was "
                                      f"not accepted ({_reason(exc)}); check agent.ca_cert"
                                      ) from exc
            except (requests.exceptions.ConnectionError,
                    requests.exceptions.ConnectTimeout) as exc:
                if isinstance(exc, requests.exceptions.ReadTimeout):
                    raise CommandTimeout(f"{self.spec.name}: the agent did not answer within "
                                         f"{timeout_s:g} s") from exc
                raise HostUnreachable(f"{self.spec.name}: cannot reach the agent at "
                                      f"{self.base} ({_reason(exc)})") from exc
            except requests.exceptions.Timeout as exc:
                raise CommandTimeout(f"{self.spec.name}: the agent did not answer within "
                                     f"{timeout_s:g} s") from exc
            except requests.exceptions.RequestException as exc:
                raise HostUnreachable(f"{self.spec.name}: {_reason(exc)}") from exc
            if answer.status_code == 409 and time.monotonic() + _BUSY_RETRY_S < deadline:
                time.sleep(_BUSY_RETRY_S)
                continue
            return self._decode(answer)

    def _decode(self, answer: requests.Response) -> dict[str, Any]:
        try:
            doc = answer.json()
        except ValueError:
            doc = None
        if answer.status_code == 200 and isinstance(doc, dict):
            return doc
        message = doc.get("message") if isinstance(doc, dict) else None
        if answer.status_code == 401:
            raise OperationError(f"{self.spec.name}: the agent refused the stored token "
                                 "(401): update the host's agent.token")
        if answer.status_code == 409:
            raise ChangeInProgress(f"{self.spec.name}: {message or 'another change is running'}")
        raise OperationError(f"{self.spec.name}: the agent answered {answer.status_code}"
                             + (f": {message}" if message else ""))

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
        """Remove the CA file and close our own HTTP session."""
        if self._ca_file:
            with contextlib.suppress(OSError):
                os.unlink(self._ca_file)
            self._ca_file = None
        if self._own_session:
            self.session.close()


def _reason(exc: BaseException) -> str:
    """The innermost useful reason of a requests error, without URLs or headers."""
    inner: BaseException = exc
    while inner.__context__ is not None and not isinstance(inner, ssl.SSLError | OSError):
        inner = inner.__context__
    text = str(inner).split(": ", 1)[-1] if str(inner) else type(inner).__name__
    return text[:200]


def transport_for(spec: HostSpec, ssh_pool: Any = None, http: requests.Session | None = None,
                  lock_owner: str | None = None) -> HostTransport:
    """The transport a host is managed with; ``lock_owner`` names the change on the host
    (over SSH, a retry of the same owner may take over the lock a dead attempt left)."""
    if spec.transport == "ssh":
        return SshTransport(spec, ssh_pool, lock_owner)
    return AgentTransport(spec, http)
