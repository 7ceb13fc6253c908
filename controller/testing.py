"""Fakes for the controller's interfaces, shipped beside them (like ``fabric.testing``).

:class:`FakeTransports` stands in for :func:`controller.transports.transport_for` in a
:class:`controller.lanes.Lane`: each host answers from a script instead of a network, and
every call is recorded, so the lanes and the ledger can be tested fast and without root.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.transports import HostSpec, HostTransport
from shared.results import OperationResult

#: what a scripted host answers: a result, an exception to raise, or a function of the call
Answer = OperationResult | BaseException | Callable[["Call"], OperationResult]


@dataclass(frozen=True)
class Call:
    """One action a lane asked of one host."""

    host: str
    action: str
    request: Any
    dry_run: bool
    timeout_s: float
    lock_owner: str | None


def succeeded(call: Call) -> OperationResult:
    """The default answer: the action worked and found nothing to report."""
    return OperationResult(call.action, ok=True)


@dataclass
class FakeTransports:
    """A transport factory whose hosts answer from ``answers`` (by host name); ``kinds``
    names the MTA kind a host's transport reports it drove (as SSH does), by host name."""

    answers: Mapping[str, Answer] = field(default_factory=dict)
    default: Answer = succeeded
    kinds: Mapping[str, str] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __call__(self, spec: HostSpec, ssh_pool: Any = None, http: Any = None,
                 lock_owner: str | None = None) -> FakeTransport:
        """The transport for one host (the signature of ``transport_for``)."""
        return FakeTransport(self, spec, lock_owner)

    def answer(self, call: Call) -> OperationResult:
        """Record ``call`` and play the host's scripted answer."""
        with self._lock:
            self.calls.append(call)
        scripted = self.answers.get(call.host, self.default)
        if isinstance(scripted, BaseException):
            raise scripted
        if isinstance(scripted, OperationResult):
            return scripted
        return scripted(call)

    def hosts_called(self) -> list[str]:
        """The hosts asked, in order."""
        return [call.host for call in self.calls]


class FakeTransport(HostTransport):
    """One host's scripted transport (made by :class:`FakeTransports`)."""

    def __init__(self, owner: FakeTransports, spec: HostSpec, lock_owner: str | None) -> None:
        self.owner = owner
        self.spec = spec
        self.lock_owner = lock_owner
        self.closed = False
        self.cut_at_least_once = False

    def run(self, action: str, request: Any, *, dry_run: bool,
            timeout_s: float) -> OperationResult:
        """Answer as scripted for this host."""
        self.mta_kind = self.owner.kinds.get(self.spec.name)
        return self.owner.answer(Call(self.spec.name, action, request, dry_run, timeout_s,
                                      self.lock_owner))

    def close(self) -> None:
        """Nothing to release (idempotent)."""
        self.closed = True

    def cut(self) -> None:
        """Note that the lane cut this host (its unit was taken over)."""
        self.cut_at_least_once = True
