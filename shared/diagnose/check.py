"""What every diagnose check shares: the :class:`Check` result and soft command helpers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.errors import ExecutorError, HostUnreachable
from shared.executor import CommandResult, Executor

#: seconds a host-side command of the checks (hostname -f, getent) may take
COMMAND_TIMEOUT_S = 30.0


@dataclass
class Check:
    """One check: ``ok`` is True, False, or None when it did not apply (skipped)."""

    name: str
    ok: bool | None
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "data": self.data}


def run_soft(executor: Executor, argv: Sequence[str], timeout: float) -> CommandResult:
    """Run a command; a command that cannot start becomes exit 127 (unreachable hosts raise)."""
    try:
        return executor.run(argv, timeout=timeout)
    except HostUnreachable:
        raise
    except ExecutorError as exc:
        return CommandResult(tuple(argv), 127, b"", exc.message.encode(), 0.0)


def first_line(result: CommandResult) -> str:
    """The first non-blank line of a command's stdout, stripped ("" if it failed)."""
    if not result.ok:
        return ""
    return next((ln.strip() for ln in result.stdout_text().splitlines() if ln.strip()), "")


def unbracket(host: str) -> tuple[str, bool]:
    """``[name]`` / ``[IPv6:addr]`` to the bare name and whether it was bracketed."""
    name = host.strip()
    bracketed = name.startswith("[") and name.endswith("]")
    if bracketed:
        name = name[1:-1]
    if name[:5].lower() == "ipv6:":
        name = name[5:]
    return name, bracketed
