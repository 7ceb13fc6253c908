"""How a worker reaches one host: through its agent (HTTP) or over SSH.

Both transports take an action name and validated params and return the same
:class:`~shared.results.OperationResult`, so a job's results look alike whichever way the
host is managed. Third-party errors (requests, paramiko) are mapped here to the shared
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

from shared.errors import ChangeInProgress, CommandTimeout, HostUnreachable, OperationError
from shared.mta import FlushRequest, MtaOperations, operations_for
from shared.profile import build_profile
from shared.results import OperationResult, Step
from shared.validation import parse_smarthost_request

#: keys of an agent answer that are the operation's outcome rather than its data
_OUTCOME_KEYS = ("ok", "error", "error_kind", "steps", "changed", "rolled_back")
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
    def run(self, action: str, params: dict[str, Any], *, dry_run: bool,
            timeout_s: float) -> OperationResult:
        """Run ``action`` within ``timeout_s`` seconds."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections (idempotent)."""


def run_operation(ops: MtaOperations, action: str, params: dict[str, Any],
                  dry_run: bool) -> OperationResult:
    """Call the operation an action names with its (already validated) params."""
    if action == "set_smarthost":
        return ops.set_smarthost(parse_smarthost_request(params), dry_run=dry_run)
    if action == "remove_smarthost":
        return ops.remove_smarthost(dry_run=dry_run)
    if action == "flush_queue":
        return ops.queue_flush(FlushRequest(**params))
    if action == "collect_status":
        return ops.status()
    if action == "diagnose":
        return ops.diagnose(domain=params.get("domain"), public_ip=params.get("public_ip"))
    if action == "read_log":
        return ops.read_log(params.get("lines", 200))
    raise OperationError(f"unknown action {action!r}")


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

    def run(self, action: str, params: dict[str, Any], *, dry_run: bool,
            timeout_s: float) -> OperationResult:
        """Run the operation; past ``timeout_s`` the connection is cut and the host fails."""
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
            return run_operation(ops, action, params, dry_run)
        except Exception as exc:
            if expired.is_set():
                raise CommandTimeout(f"{self.spec.name}: no answer within the job's "
                                     f"timeout_s ({timeout_s:g} s)") from exc
            raise
        finally:
            timer.cancel()

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

    def run(self, action: str, params: dict[str, Any], *, dry_run: bool,
            timeout_s: float) -> OperationResult:
        """Call the agent route for ``action`` and turn its answer into a result."""
        if action == "set_smarthost":
            doc = self._call("PUT", "/v1/smarthost", json_body={**params, "dry_run": dry_run},
                             timeout_s=timeout_s)
        elif action == "remove_smarthost":
            doc = self._call("DELETE", "/v1/smarthost", json_body={"dry_run": dry_run},
                             timeout_s=timeout_s)
        elif action == "flush_queue":
            doc = self._call("POST", "/v1/queue/flush", json_body=params, timeout_s=timeout_s)
        elif action == "collect_status":
            doc = self._call("GET", "/v1/status", timeout_s=timeout_s)
        elif action == "diagnose":
            doc = self._call("POST", "/v1/diagnose", json_body=params, timeout_s=timeout_s)
        elif action == "read_log":
            doc = self._call("GET", "/v1/log", params={"lines": params.get("lines", 200)},
                             timeout_s=timeout_s)
        else:
            raise OperationError(f"unknown action {action!r}")
        steps = [Step(**step) for step in doc.get("steps", [])]
        data = {key: value for key, value in doc.items() if key not in _OUTCOME_KEYS}
        return OperationResult(action, ok=bool(doc.get("ok", True)), steps=steps, data=data,
                               changed=bool(doc.get("changed", False)),
                               rolled_back=bool(doc.get("rolled_back", False)),
                               error=doc.get("error"), error_kind=doc.get("error_kind"))

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
