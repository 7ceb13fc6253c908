"""One exception tree for every MTA operation and transport.

::

    RelayfleetError
    ├── ValidationError          a caller value broke a grammar; nothing was run
    ├── ConfigError              a profile or config file is unusable
    ├── ExecutorError            running something on the host went wrong
    │   ├── HostUnreachable      could not reach / log in to the host at all
    │   │   └── HostKeyMismatch  the host offered a key other than the pinned one
    │   ├── CommandTimeout       a command outlived its time box
    │   └── CommandFailed        a command exited non-zero where success was required
    ├── OperationError           an operation could not do what it was asked
    │   ├── ParseError           a file or command output did not read as expected
    │   ├── CompileError         m4 or the cf validation refused the new config
    │   ├── RolledBack           the change failed after the swap and the old config is back
    │   └── ChangeInProgress     another config change holds the host's lock
    └── NotSupported             the MTA or flavour does not offer this operation

Every message is safe to show to a user: no secret ever goes into one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class RelayfleetError(Exception):
    """Base of every error this package raises."""

    #: a short, stable, machine-readable name for the error kind
    kind = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationError(RelayfleetError):
    """A value failed validation; ``errors`` maps field names to reasons."""

    kind = "validation"

    def __init__(self, message: str, errors: Mapping[str, Sequence[str]] | None = None) -> None:
        super().__init__(message)
        self.errors: dict[str, list[str]] = {k: list(v) for k, v in (errors or {}).items()}

    @classmethod
    def for_field(cls, field: str, reason: str) -> ValidationError:
        """Build an error about one field."""
        return cls(f"{field}: {reason}", {field: [reason]})


class ConfigError(RelayfleetError):
    """A profile or configuration file cannot be used."""

    kind = "config"


class ExecutorError(RelayfleetError):
    """Running a command or touching a file on the host failed."""

    kind = "executor"


class HostUnreachable(ExecutorError):
    """The host could not be reached or logged in to."""

    kind = "unreachable"


class HostKeyMismatch(HostUnreachable):
    """The host's SSH key is not the one pinned for it."""

    kind = "host_key"


class CommandTimeout(ExecutorError):
    """A command did not finish within its time box."""

    kind = "timeout"


class CommandFailed(ExecutorError):
    """A command exited non-zero where success was required."""

    kind = "command_failed"

    def __init__(self, message: str, exit_code: int | None = None, output: str = "") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.output = output


class OperationError(RelayfleetError):
    """An operation could not complete."""

    kind = "operation"


class ParseError(OperationError):
    """A file or a command's output could not be parsed."""

    kind = "parse"


class CompileError(OperationError):
    """m4 or the validation of the compiled sendmail.cf failed; nothing was swapped."""

    kind = "compile"


class RolledBack(OperationError):
    """The change failed after the swap; the previous configuration was restored."""

    kind = "rolled_back"


class ChangeInProgress(OperationError):
    """Another configuration change is running on this host."""

    kind = "conflict"


class NotSupported(RelayfleetError):
    """The MTA or flavour does not offer this operation."""

    kind = "not_supported"
