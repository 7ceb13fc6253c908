"""Structured results of MTA operations: the steps they ran and the data they found."""

from __future__ import annotations

import time
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.compat import zip_strict
from shared.errors import CommandFailed, CommandTimeout
from shared.executor import CommandResult, Executor

#: how much of a command's output a step keeps (head and tail), so results stay small
OUTPUT_LIMIT = 4000
REDACTED = "[redacted]"


class Redactor:
    """Replaces known secrets in any text before it is kept, logged or returned."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def add(self, secret: str | None) -> None:
        """Remember one more secret to hide."""
        if secret and secret not in self._secrets:
            self._secrets = sorted([*self._secrets, secret], key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text


def trim_output(text: str, limit: int = OUTPUT_LIMIT) -> str:
    """Keep the head and tail of a long output, marking what was cut."""
    if len(text) <= limit:
        return text
    half = limit // 2
    cut = len(text) - 2 * half
    return f"{text[:half]}\n[... {cut} characters cut ...]\n{text[-half:]}"


@dataclass
class Step:
    """One thing an operation did on the host."""

    name: str
    argv: list[str]
    exit_code: int | None
    duration_s: float
    ok: bool
    output: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (what ``dataclasses.asdict`` gives, built directly: asdict's
        recursive deep copy cost more than the rest of recording a host's result)."""
        return {"name": self.name, "argv": list(self.argv), "exit_code": self.exit_code,
                "duration_s": self.duration_s, "ok": self.ok, "output": self.output}


@dataclass
class OperationResult:
    """What an operation did and found; ``ok`` is false when it failed."""

    operation: str
    ok: bool = True
    steps: list[Step] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    changed: bool = False
    rolled_back: bool = False
    error: str | None = None
    error_kind: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {
            "operation": self.operation,
            "ok": self.ok,
            "changed": self.changed,
            "rolled_back": self.rolled_back,
            "error": self.error,
            "error_kind": self.error_kind,
            "steps": [s.to_dict() for s in self.steps],
            "data": self.data,
        }


class StepRecorder:
    """Runs commands through an executor and records each as a redacted :class:`Step`."""

    def __init__(self, executor: Executor, redactor: Redactor | None = None) -> None:
        self.executor = executor
        self.redact = redactor or Redactor()
        self.steps: list[Step] = []

    def run(
        self,
        name: str,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        timeout: float | None = 60.0,
        check: bool = True,
        ok_codes: Container[int] = (0,),
        output_filter: Callable[[str], str] | None = None,
        keep_stdout: bool = True,
    ) -> CommandResult:
        """Run ``argv``, record it, and raise :class:`CommandFailed` if ``check`` and it failed.

        ``output_filter`` rewrites the output before it is kept (e.g. to drop a transcript);
        ``keep_stdout=False`` keeps only stderr (when stdout is a product, like a compiled cf).
        """
        start = time.monotonic()
        try:
            result = self.executor.run(argv, input=input, timeout=timeout)
        except CommandTimeout:
            self.steps.append(
                Step(name, list(argv), None, round(time.monotonic() - start, 3), False,
                     f"timed out after {timeout}s")
            )
            raise
        ok = result.exit_code in ok_codes
        text = result.output_text() if keep_stdout else result.stderr.decode("utf-8", "replace")
        output = self.redact(trim_output(output_filter(text) if output_filter else text))
        self.steps.append(
            Step(name, list(argv), result.exit_code, round(result.duration_s, 3), ok, output)
        )
        if check and not ok:
            raise CommandFailed(
                f"{name} failed: {' '.join(argv)} exited {result.exit_code}: "
                f"{self.redact(trim_output(result.output_text(), 500)).strip()}",
                exit_code=result.exit_code,
                output=output,
            )
        return result

    def run_many(self, commands: Sequence[tuple[str, Sequence[str]]], *,
                 timeout: float | None = 60.0,
                 output_filter: Callable[[str], str] | None = None,
                 quiet: Container[str] = ()) -> list[CommandResult]:
        """Run independent named commands (one round trip on remote hosts); record each.

        Steps named in ``quiet`` keep only the size of their output: file reads, whose
        content is data (and may be a secret), not a log.
        """
        results = self.executor.run_many([argv for _, argv in commands], timeout=timeout)
        for (name, argv), result in zip_strict(commands, results):
            text = result.output_text()
            if name in quiet:
                text = f"({len(result.stdout)} bytes read)"
            elif output_filter:
                text = output_filter(text)
            output = self.redact(trim_output(text))
            self.steps.append(Step(name, list(argv), result.exit_code,
                                   round(result.duration_s, 3), result.ok, output))
        return results

    def note(self, name: str, detail: str = "", ok: bool = True,
             started: float | None = None) -> None:
        """Record a step that was not a command (a file write, a rename, a check)."""
        duration = 0.0 if started is None else time.monotonic() - started
        self.steps.append(Step(name, [], None, round(duration, 3), ok, self.redact(detail)))
