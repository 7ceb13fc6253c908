"""/etc/hosts edits of fix_hostname (shared.hostsfile): each rule, layout kept, idempotence,
and agreement with the diagnose check over generated files."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.diagnose import hosts_file_problems
from shared.hostsfile import (
    DEFAULT_HOSTS,
    canonical_entry,
    entries,
    is_qualified,
    names_host,
    qualify,
)

SHORT, FQDN = "sipserver1", "sipserver1.ourtest.com"

#: the seed's own /etc/hosts, already right: its first line names the host
SEED_HOSTS = """192.168.10.10 sipserver1.ourtest.com sipserver1
127.0.0.1   localhost localhost.localdomain localhost4 localhost4.localdomain4 sipserver1
127.0.1.1   sipserver1
::1         localhost localhost.localdomain localhost6 localhost6.localdomain6
"""


def _fix(text: str) -> str:
    return qualify(text, SHORT, FQDN)


def _resolution_problems(text: str) -> list[str]:
    """The diagnose check's problems but lines it wants a person to fix (an address that
    does not parse: the resolver skips the line, and so does fix_hostname)."""
    return [p for p in hosts_file_problems(text, SHORT, FQDN) if "not an IP address" not in p]


@pytest.mark.parametrize("text", [
    SEED_HOSTS,
    # Debian's convention, as its installer writes it when given a domain
    "127.0.0.1\tlocalhost\n127.0.1.1\tsipserver1.ourtest.com\tsipserver1\n\n"
    "# The following lines are desirable for IPv6 capable hosts\n"
    "::1     localhost ip6-localhost ip6-loopback\n",
    "10.0.0.5 SipServer1.OurTest.COM. SIPSERVER1 voicemail # the PBX\n",
    "2001:db8::10 sipserver1.ourtest.com sipserver1\n127.0.0.1 localhost sipserver1\n",
])
def test_a_file_already_right_comes_back_unchanged(text: str) -> None:
    assert is_qualified(text, SHORT, FQDN)
    assert _fix(text) is text


@pytest.mark.parametrize("text, fixed", [
    # Debian's installer without a domain: its 127.0.1.1 line gets the FQDN first
    ("127.0.0.1\tlocalhost\n127.0.1.1\tsipserver1\n\n::1     localhost ip6-localhost\n",
     "127.0.0.1\tlocalhost\n127.0.1.1\tsipserver1.ourtest.com sipserver1\n\n"
     "::1     localhost ip6-localhost\n"),
    # the host's own address names the short name only: that line is fixed
    ("127.0.0.1   localhost\n192.168.10.10   sipserver1   # PBX\n",
     "127.0.0.1   localhost\n192.168.10.10   sipserver1.ourtest.com sipserver1   # PBX\n"),
    # names in the wrong order; other names kept, after the host's
    ("192.168.10.10\tsipserver1 voicemail\tsipserver1.ourtest.com\n",
     "192.168.10.10\tsipserver1.ourtest.com sipserver1 voicemail\n"),
    # the FQDN without the short name, its spelling kept
    ("10.0.0.5 SipServer1.OurTest.com\n", "10.0.0.5 SipServer1.OurTest.com sipserver1\n"),
    # localhost's line names the host before the right line: the name leaves that line
    ("127.0.0.1 localhost sipserver1\n192.168.10.10 sipserver1.ourtest.com sipserver1\n",
     "127.0.0.1 localhost\n192.168.10.10 sipserver1.ourtest.com sipserver1\n"),
    # ... and before a line to fix
    ("127.0.0.1 localhost sipserver1.ourtest.com sipserver1 loghost\n"
     "192.168.10.10 sipserver1\n",
     "127.0.0.1 localhost loghost\n192.168.10.10 sipserver1.ourtest.com sipserver1\n"),
    # only localhost's lines name it: Debian's line goes in right after 127.0.0.1's
    ("127.0.0.1   localhost localhost.localdomain sipserver1\n::1 localhost sipserver1\n",
     "127.0.0.1   localhost localhost.localdomain\n127.0.1.1   sipserver1.ourtest.com "
     "sipserver1\n::1 localhost\n"),
    # nothing names it
    ("# static table\n127.0.0.1\tlocalhost\n::1\tlocalhost\n",
     "# static table\n127.0.0.1\tlocalhost\n127.0.1.1\tsipserver1.ourtest.com sipserver1\n"
     "::1\tlocalhost\n"),
    # a line left without names goes; its comment stays
    ("127.0.0.1 sipserver1 # old\n127.0.0.1 localhost\n",
     "# old\n127.0.0.1 localhost\n127.0.1.1 sipserver1.ourtest.com sipserver1\n"),
    ("127.0.0.1 sipserver1\n", "127.0.1.1\tsipserver1.ourtest.com sipserver1\n"),
    # no 127.0.0.1 line: before the first address line, after the leading comments
    ("# hosts\n\n10.0.0.9 other\n", "# hosts\n\n127.0.1.1\tsipserver1.ourtest.com "
     "sipserver1\n10.0.0.9 other\n"),
    ("", "127.0.1.1\tsipserver1.ourtest.com sipserver1\n"),
    (DEFAULT_HOSTS, "127.0.0.1\tlocalhost\n127.0.1.1\tsipserver1.ourtest.com sipserver1\n"
                    "::1\tlocalhost ip6-localhost ip6-loopback\n"),
    # no final line end; Windows line ends
    ("127.0.0.1 localhost", "127.0.0.1 localhost\n127.0.1.1 sipserver1.ourtest.com sipserver1\n"),
    ("127.0.0.1 localhost\r\n10.0.0.5 sipserver1\r\n",
     "127.0.0.1 localhost\r\n10.0.0.5 sipserver1.ourtest.com sipserver1\r\n"),
    # a line whose address does not parse is skipped by the resolver, and left alone
    ("192.168.10.300 sipserver1\n127.0.0.1 localhost\n",
     "192.168.10.300 sipserver1\n127.0.0.1 localhost\n127.0.1.1 sipserver1.ourtest.com "
     "sipserver1\n"),
])
def test_each_rule(text: str, fixed: str) -> None:
    assert not is_qualified(text, SHORT, FQDN)
    assert _fix(text) == fixed
    assert _fix(fixed) == fixed
    assert _resolution_problems(fixed) == []


def test_the_line_read_first_is_the_one_fixed() -> None:
    # Debian's line comes before the host's address: fixing it is what the resolver reads
    text = "127.0.1.1 sipserver1\n192.168.10.10 sipserver1\n"
    assert _fix(text) == "127.0.1.1 sipserver1.ourtest.com sipserver1\n192.168.10.10 sipserver1\n"


def test_canonical_entry_is_the_first_line_naming_the_host() -> None:
    lines = entries(SEED_HOSTS)
    first = canonical_entry(lines, "SipServer1", "sipserver1.ourtest.com.")
    assert first is not None and first.number == 1 and names_host(first, SHORT, FQDN)
    localhost = canonical_entry(entries("127.0.0.1 localhost sipserver1\n"), SHORT, FQDN)
    assert localhost is not None and localhost.for_localhost
    assert not names_host(localhost, SHORT, FQDN)
    assert canonical_entry(entries("10.0.0.1 other\n"), SHORT, FQDN) is None


# -- generated files ---------------------------------------------------------------------

_LINES = [
    "127.0.0.1\tlocalhost\n", "127.0.0.1   localhost sipserver1\n",
    "127.0.0.1 localhost sipserver1.ourtest.com\n", "127.0.1.1\tsipserver1\n",
    "127.0.1.1 sipserver1.ourtest.com sipserver1\n", "::1 localhost ip6-localhost\n",
    "::1 localhost sipserver1\n", "192.168.10.10 sipserver1\n",
    "192.168.10.10 sipserver1 sipserver1.ourtest.com\n",
    "192.168.10.10 sipserver1.ourtest.com  mail # the PBX\n", "10.0.0.9 other.ourtest.com\n",
    "# a comment naming sipserver1\n", "\n", "   \n", "300.1.1.1 sipserver1\n",
    "10.0.0.7 SIPSERVER1.OURTEST.COM\n", "127.0.0.1 sipserver1\n",
]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_LINES), max_size=8), st.booleans())
def test_generated_files(lines: list[str], final_line_end: bool) -> None:
    text = "".join(lines)
    if not final_line_end:
        text = text.rstrip("\n")
    fixed = _fix(text)
    assert is_qualified(fixed, SHORT, FQDN)
    assert _fix(fixed) == fixed
    # the diagnose check agrees with the edit
    assert _resolution_problems(fixed) == []
    # lines that do not name the host are kept, in their order
    untouched = [ln.rstrip("\n") for ln in text.splitlines()
                 if "sipserver1" not in ln.split("#")[0].lower()]
    kept = iter(fixed.splitlines())
    assert all(any(line == out for out in kept) for line in untouched), (text, fixed)
    if is_qualified(text, SHORT, FQDN):
        assert fixed == text
