"""What the agent needs from Python 3.10+ for the Python 3.9 it also runs on (Debian 11,
RHEL 9): one place, so the rest of agent/ and shared/ stays plain.

The project's linters target 3.11 (the controller's floor), so they would rewrite these
back to the 3.10+ spellings: each line says so to them.
"""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Iterable, Iterator
from datetime import timezone
from typing import TypeVar

if sys.version_info >= (3, 11):  # noqa: UP036 -- the agent's floor is 3.9, not 3.11
    import tomllib  # novermin -- this branch runs only on 3.11+
else:
    import tomli as tomllib

__all__ = ["UTC", "no_leading_zeros", "timeouts_as_timeout_error", "tomllib", "zip_strict"]

#: ``datetime.UTC`` (3.11)
UTC = timezone.utc  # noqa: UP017

A = TypeVar("A")
B = TypeVar("B")
_END = object()


def no_leading_zeros(text: str) -> str:
    """``text`` for ``ipaddress``, which from 3.9.5 on refuses an IPv4 part with a leading zero
    (``010.0.0.1``: inet_aton reads it as octal, 8.0.0.1); 3.9.2 (Debian 11's) reads it as
    10.0.0.1. ValueError here makes every Python refuse it (IPv4 in IPv6 too)."""
    dotted = text.rsplit(":", 1)[-1]
    if "." in dotted and any(len(part) > 1 and part.startswith("0")
                             for part in dotted.split(".")):
        raise ValueError(f"leading zeros in an IPv4 address are ambiguous: {text!r}")
    return text


@contextlib.contextmanager
def timeouts_as_timeout_error() -> Iterator[None]:
    """A socket's time-out raised as TimeoutError: before 3.10 ``socket.timeout`` is only an
    OSError, so code catching TimeoutError would take it for a dropped connection."""
    try:
        yield
    except socket.timeout as exc:  # noqa: UP041 -- the 3.9 name; TimeoutError itself from 3.10
        raise TimeoutError(*exc.args) from exc


def zip_strict(first: Iterable[A], second: Iterable[B]) -> Iterator[tuple[A, B]]:
    """``zip(first, second, strict=True)`` (3.10): ValueError when one runs out first."""
    rest = iter(second)
    for a in first:
        try:
            b = next(rest)
        except StopIteration:
            raise ValueError("zip_strict: the second argument is shorter than the first") from None
        yield a, b
    if next(rest, _END) is not _END:
        raise ValueError("zip_strict: the second argument is longer than the first")
