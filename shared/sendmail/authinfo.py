"""The sendmail map sources relayfleet edits, as pure text functions.

The client authentication map (/etc/mail/authinfo) holds one entry per smarthost:
``AuthInfo:HOST "U:user" "I:user" "P=c2VjcmV0" "M:PLAIN LOGIN"``. The password goes in
sendmail's base64 form (``P=``, not ``P:``): a password may hold blanks, quotes and
backslashes, which the plain form cannot carry; user names are validated upstream so none
holds a quote, a backslash or a blank.

The access map (/etc/mail/access) is the host's own; relayfleet owns one line in it, the
smarthost's ``TLS_Srv:HOST`` entry, which sendmail's tls_server ruleset checks after
EHLO/STARTTLS and before AUTH: ``ENCR:112`` (mail waits unless STARTTLS succeeded) or
``VERIFY:112+CN`` (the certificate chain verified and the certificate names the relay).
"""

from __future__ import annotations

import base64
import re

MECHANISMS = "PLAIN LOGIN"
#: the access map entry for each TLS policy that needs one ("may" is sendmail's default)
TLS_REQUIREMENTS = {"encrypt": "ENCR:112", "verify": "VERIFY:112+CN"}


def _map_key(tag: str, host: str) -> str:
    """A map key for a smarthost: the tag and the name without brackets (``[IPv6:..]``
    becomes ``IPv6:..``, the form sendmail looks an address up with)."""
    return f"{tag}:{host.strip('[]')}"


def authinfo_key(host: str) -> str:
    """The map key sendmail looks up for a smarthost (the name without brackets)."""
    return _map_key("AuthInfo", host)


def tls_key(host: str) -> str:
    """The access map key of a smarthost's TLS requirement."""
    return _map_key("TLS_Srv", host)


def _line_key(line: str) -> str:
    # makemap folds keys to lower case: a key written in another case is the same entry
    return line.split(None, 1)[0].lower() if line.strip() else ""


def _lines(text: str) -> list[str]:
    return [ln if ln.endswith("\n") else ln + "\n" for ln in text.splitlines()]


def _without(text: str, *keys: str) -> list[str]:
    wanted = {key.lower() for key in keys}
    return [ln for ln in _lines(text) if _line_key(ln) not in wanted]


def encoded_password(password: str) -> str:
    """A password as the map holds it (base64 of its UTF-8): as secret as the password."""
    return base64.b64encode(password.encode()).decode()


def set_entry(text: str, host: str, username: str, password: str) -> str:
    """Return the map source with one entry for ``host`` holding these credentials."""
    entry = (f'{authinfo_key(host)} "U:{username}" "I:{username}" '
             f'"P={encoded_password(password)}" "M:{MECHANISMS}"\n')
    return "".join([*_without(text, authinfo_key(host)), entry])


def remove_entry(text: str, *hosts: str) -> str:
    """Return the map source without the entries of ``hosts``."""
    return "".join(_without(text, *map(authinfo_key, hosts)))


_USER_RE = re.compile(r'"U:(?P<user>[^"]*)"')


def username_for(text: str, host: str) -> str | None:
    """The user name stored for ``host``, or None (the password is never read out)."""
    key = authinfo_key(host).lower()
    for line in text.splitlines():
        if _line_key(line) == key:
            match = _USER_RE.search(line)
            return match.group("user") if match else None
    return None


def set_tls_entry(text: str, host: str, mode: str, *, drop: tuple[str, ...] = ()) -> str:
    """Return the access map source with ``host``'s TLS requirement for ``mode`` (none for
    "may"), in the place of the one it had, and without the entries of the hosts in ``drop``
    (a former smarthost). Every other line is kept as it is."""
    key = tls_key(host)
    requirement = TLS_REQUIREMENTS.get(mode)
    lines = _without(text, *map(tls_key, [h for h in drop if tls_key(h).lower() != key.lower()]))
    at = next((i for i, ln in enumerate(lines) if _line_key(ln) == key.lower()), len(lines))
    kept = [ln for ln in lines if _line_key(ln) != key.lower()]
    if requirement is not None:
        kept.insert(min(at, len(kept)), f"{key}\t{requirement}\n")
    return "".join(kept)


def remove_tls_entry(text: str, *hosts: str) -> str:
    """Return the access map source without the TLS requirements of ``hosts``."""
    return "".join(_without(text, *map(tls_key, hosts)))


def tls_mode_for(text: str, host: str) -> str:
    """The TLS policy the access map holds for ``host``: "verify" (a verified certificate
    naming the relay), "encrypt" (STARTTLS required, or a verified chain without the name
    check), or "may" (no requirement)."""
    key = tls_key(host).lower()
    value = next((ln.split(None, 1)[1].strip() for ln in text.splitlines()
                  if _line_key(ln) == key and len(ln.split(None, 1)) == 2), "")
    requirement = re.sub(r"^(?:PERM|TEMP)\+", "", value.upper())
    if requirement.startswith("VERIFY"):
        extensions = requirement.partition("+")[2].split("++")
        named = any(ext == "CN" or ext.startswith("CN:") for ext in extensions)
        return "verify" if named else "encrypt"
    return "encrypt" if requirement.startswith("ENCR:") else "may"
