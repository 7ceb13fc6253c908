"""/etc/hosts as text: how the resolver reads the host's own name from it, and the edit that
makes that name fully qualified (``fix_hostname``).

The C library's files backend answers a name with the FIRST line naming it, and takes that
line's first name as the canonical one: ``hostname -f`` prints it, and sendmail calls itself
by it (``$j``). So the first line naming the host's short name (or its full name) must put
the fully qualified name first and the short name after it, on the host's own address or
on a loopback address of its own, as Debian's ``127.0.1.1 FQDN SHORT`` convention does; a
line for localhost's address (``127.0.0.1``, ``::1``) must not come first, or the host is
called ``localhost``.

:func:`qualify` edits the text so, touching nothing else: comments, other lines, their
order and their spacing stay as they are, and a file already right comes back unchanged.
Pure text functions: reading and writing the file is the caller's.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import TypeAlias  # novermin -- read by type checkers only (3.10+)

IpAddress: TypeAlias = "ipaddress.IPv4Address | ipaddress.IPv6Address"
#: localhost's own addresses: a name on their lines is an alias of localhost
LOCALHOST_ADDRESSES = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
#: Debian's address for the host's own name when it has no fixed address of its own
OWN_LOOPBACK = "127.0.1.1"
#: what a missing /etc/hosts is made from before the host's line goes in (Debian's first
#: lines, without its own 127.0.1.1 line)
DEFAULT_HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
_TOKEN = re.compile(r"\S+")


@dataclass(frozen=True)
class HostsEntry:
    """One line of /etc/hosts with an address and names."""

    #: 1-based line number
    number: int
    address: str
    #: None: the address does not parse (the resolver skips the line)
    ip: IpAddress | None
    #: the names, lowercase, without a trailing dot
    names: tuple[str, ...]

    @property
    def for_localhost(self) -> bool:
        """The line is localhost's (127.0.0.1 or ::1): its names are localhost's aliases."""
        return self.ip in LOCALHOST_ADDRESSES

    def names_any(self, *names: str) -> bool:
        """The line names one of ``names`` (normalised)."""
        return any(name in self.names for name in names)


def normal_name(name: str) -> str:
    """A host name as the resolver compares it: lowercase, no trailing dot."""
    return name.lower().rstrip(".")


def _parse_address(token: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(token.split("%", 1)[0])
    except ValueError:
        return None


def _content(raw: str) -> str:
    """A line without its line end and its comment (``#`` starts one anywhere)."""
    return raw.rstrip("\r\n").split("#", 1)[0]


def entries(text: str) -> list[HostsEntry]:
    """Every line with an address and at least one name, in file order."""
    out = []
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = _content(raw).split()
        if len(fields) >= 2:
            out.append(HostsEntry(number, fields[0], _parse_address(fields[0]),
                                  tuple(normal_name(n) for n in fields[1:])))
    return out


def lookup(text: str, name: str) -> HostsEntry | None:
    """The line the resolver answers ``name`` with: the first one naming it whose address
    parses (its first name is the canonical name)."""
    wanted = normal_name(name)
    return next((e for e in entries(text) if e.ip is not None and wanted in e.names), None)


def canonical_entry(lines: list[HostsEntry], short: str, fqdn: str) -> HostsEntry | None:
    """The line the resolver answers the host's names with: the first one (with an address
    that parses) naming the short or the full name."""
    short, fqdn = normal_name(short), normal_name(fqdn)
    return next((e for e in lines if e.ip is not None and e.names_any(short, fqdn)), None)


def names_host(entry: HostsEntry, short: str, fqdn: str) -> bool:
    """``entry`` makes ``fqdn`` the canonical name and ``short`` an alias of it, on an address
    that is not localhost's."""
    short, fqdn = normal_name(short), normal_name(fqdn)
    return (entry.ip is not None and not entry.for_localhost and entry.names[0] == fqdn
            and short in entry.names[1:])


def is_qualified(text: str, short: str, fqdn: str) -> bool:
    """/etc/hosts resolves ``short`` (and ``fqdn``) to ``fqdn`` as canonical name."""
    first = canonical_entry(entries(text), short, fqdn)
    return first is not None and names_host(first, short, fqdn)


def _with_names(raw: str, names: list[str]) -> str | None:
    """``raw`` (a line with an address) with ``names`` instead of its names, keeping its
    indentation, the gap after the address, the gap between names, what follows the last
    name, its comment and its line end. None: no names left and no comment to keep."""
    body = raw.rstrip("\r\n")
    ending = raw[len(body):]
    content, hash_, comment = body.partition("#")
    tokens = list(_TOKEN.finditer(content))
    if not names:
        return f"{hash_}{comment}{ending}" if hash_ else None
    address = tokens[0]
    gap = content[address.end():tokens[1].start()]
    between = content[tokens[1].end():tokens[2].start()] if len(tokens) > 2 else " "
    return (content[:address.end()] + gap + between.join(names)
            + content[tokens[-1].end():] + hash_ + comment + ending)


def _raw_names(raw: str) -> list[str]:
    return _content(raw).split()[1:]


def qualify(text: str, short: str, fqdn: str) -> str:
    """``text`` edited so that the host's names resolve to ``fqdn`` as canonical name.

    The rules, in order: a file already right is returned as it is. The line to carry the
    names is the first line naming the short or the full name on an address that is not
    localhost's — the host's own address (``192.168.10.10 sipserver1.ourtest.com
    sipserver1``) or Debian's ``127.0.1.1``: it gets ``FQDN SHORT`` as its first names,
    its other names after them. Localhost's lines (``127.0.0.1``, ``::1``) that name the
    host before it lose those names (otherwise the host is called ``localhost``; a line
    left without names is dropped, its comment kept). With no such line, a
    ``127.0.1.1 FQDN SHORT`` line is added right after the ``127.0.0.1`` line (before the
    first address line when there is none).
    """
    short_n, fqdn_n = normal_name(short), normal_name(fqdn)
    if is_qualified(text, short_n, fqdn_n):
        return text
    raw_lines = text.splitlines(keepends=True)
    naming = [e for e in entries(text) if e.ip is not None and e.names_any(short_n, fqdn_n)]
    target = next((e for e in naming if not e.for_localhost), None)
    lines: list[str | None] = list(raw_lines)
    for entry in naming:
        if entry is target:
            break
        raw = raw_lines[entry.number - 1]
        lines[entry.number - 1] = _with_names(
            raw, [n for n in _raw_names(raw) if normal_name(n) not in (short_n, fqdn_n)])
    if target is not None:
        raw = raw_lines[target.number - 1]
        names = _raw_names(raw)
        # an existing spelling of a name is kept (PBX.Example.com stays as written)
        keep = {normal_name(n): n for n in reversed(names)}
        ordered = [keep.get(fqdn_n, fqdn_n), keep.get(short_n, short_n)]
        ordered += [n for n in names if normal_name(n) not in (short_n, fqdn_n)]
        lines[target.number - 1] = _with_names(raw, ordered)
    kept = [line for line in lines if line is not None]
    if target is None:
        index, line = _own_loopback_line(kept, fqdn_n, short_n)
        if index > 0 and not kept[index - 1].endswith("\n"):
            kept[index - 1] += "\n"
        kept.insert(index, line)
    return "".join(kept)


def _own_loopback_line(raw_lines: list[str], fqdn: str, short: str) -> tuple[int, str]:
    """Where Debian's ``127.0.1.1 FQDN SHORT`` line goes (the index to insert at) and the
    line, laid out like the ``127.0.0.1`` line it follows."""
    parsed = [(index, _content(raw).split(), raw) for index, raw in enumerate(raw_lines)]
    with_address = [(i, f, raw) for i, f, raw in parsed if len(f) >= 2]
    localhost = next(((i, raw) for i, f, raw in with_address
                      if _parse_address(f[0]) == LOCALHOST_ADDRESSES[0]), None)
    if localhost is None:
        index = with_address[0][0] if with_address else len(raw_lines)
        return index, f"{OWN_LOOPBACK}\t{fqdn} {short}\n"
    index, raw = localhost
    body = raw.rstrip("\r\n")
    content = _content(raw)
    tokens = list(_TOKEN.finditer(content))
    # 127.0.0.1 and 127.0.1.1 are the same length: the same gap keeps the names aligned
    gap = content[tokens[0].end():tokens[1].start()]
    ending = raw[len(body):] or "\n"
    return index + 1, f"{content[:tokens[0].start()]}{OWN_LOOPBACK}{gap}{fqdn} {short}{ending}"
