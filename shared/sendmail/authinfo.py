"""The client authentication map (/etc/mail/authinfo) as pure text functions.

An entry reads ``AuthInfo:HOST "U:user" "I:user" "P:secret" "M:PLAIN LOGIN"``; the
values are validated upstream so none holds a quote, a backslash or a blank.
"""

from __future__ import annotations

import re

MECHANISMS = "PLAIN LOGIN"


def authinfo_key(host: str) -> str:
    """The map key sendmail looks up for a smarthost (the name without brackets)."""
    return f"AuthInfo:{host.strip('[]')}"


def _line_key(line: str) -> str:
    return line.split(None, 1)[0] if line.strip() else ""


def set_entry(text: str, host: str, username: str, password: str) -> str:
    """Return the map source with one entry for ``host`` holding these credentials."""
    key = authinfo_key(host)
    entry = f'{key} "U:{username}" "I:{username}" "P:{password}" "M:{MECHANISMS}"\n'
    lines = [ln if ln.endswith("\n") else ln + "\n" for ln in text.splitlines()]
    kept = [ln for ln in lines if _line_key(ln) != key]
    return "".join([*kept, entry])


def remove_entry(text: str, host: str) -> str:
    """Return the map source without ``host``'s entry."""
    key = authinfo_key(host)
    return "".join(ln for ln in text.splitlines(keepends=True) if _line_key(ln) != key)


_USER_RE = re.compile(r'"U:(?P<user>[^"]*)"')


def username_for(text: str, host: str) -> str | None:
    """The user name stored for ``host``, or None (the password is never read out)."""
    key = authinfo_key(host)
    for line in text.splitlines():
        if _line_key(line) == key:
            match = _USER_RE.search(line)
            return match.group("user") if match else None
    return None
