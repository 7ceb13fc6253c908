"""What can go wrong in the CLI, and the exit code each problem ends with.

::

    CliError                 (exit 1 unless a subclass says otherwise)
    ├── UsageProblem         exit 2: the command line or a local file is wrong
    └── ApiProblem           exit 3: the controller refused or could not be reached
        ├── ApiRefused       it answered 4xx/5xx (status, message, field errors)
        └── ApiUnreachable   no answer (connection refused, time-out, TLS failure)

Job outcomes are not errors: a job that ends partial, failed or cancelled exits 1 through
:data:`EXIT_JOB_NOT_ALL_OK`. A declined confirmation exits :data:`EXIT_DECLINED` (4), a
bug :data:`EXIT_INTERNAL` (70, sysexits' EX_SOFTWARE), Ctrl-C :data:`EXIT_DETACHED` (130).
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_JOB_NOT_ALL_OK = 1
EXIT_USAGE = 2
EXIT_API = 3
#: the operator answered no at a confirmation prompt: nothing was done, by choice
EXIT_DECLINED = 4
#: an unexpected exception (a bug in the CLI, or an answer it cannot read)
EXIT_INTERNAL = 70
#: the shell's code for an interrupted command: a detached wait does not know the outcome
EXIT_DETACHED = 130


class CliError(Exception):
    """A problem the CLI reports on stderr before exiting with :attr:`exit_code`."""

    exit_code = EXIT_JOB_NOT_ALL_OK

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageProblem(CliError):
    """The command line, or a file it names, is wrong."""

    exit_code = EXIT_USAGE


class ApiProblem(CliError):
    """The API refused the call or was not there."""

    exit_code = EXIT_API


class ApiRefused(ApiProblem):
    """The controller answered with an error document."""

    def __init__(self, status: int, message: str, errors: dict[str, Any] | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.status = status
        self.errors: dict[str, Any] = errors or {}


class ApiUnreachable(ApiProblem):
    """No HTTP answer came back."""

    def __init__(self, message: str, hint: str | None = None, *, reason: str = "",
                 maybe_done: bool = False) -> None:
        super().__init__(message, hint)
        #: what went wrong on the wire (for callers that say it in their own words)
        self.reason = reason
        #: a request that changes something may have reached the controller and been
        #: carried out: only its answer was lost
        self.maybe_done = maybe_done
