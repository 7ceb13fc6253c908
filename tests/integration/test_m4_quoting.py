"""Every host the API accepts compiles to exactly that host in sendmail.cf (real m4, real cf).

Needs GNU m4 and sendmail-cf; when either is missing these tests fail, they do not skip.
sendmail's cf/m4/proto.m4 writes ``DS`'ifdef(`SMART_HOST', `SMART_HOST')``: the value of
SMART_HOST is rescanned once, which is why m4_quote adds a second level of quotes.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.errors import ValidationError
from shared.sendmail.mc import Smarthost, read_cf, set_smarthost_mc
from shared.validation import MAILERS, SmarthostRequest, m4_quote, parse_smarthost_request

CF_M4 = "/usr/share/sendmail/cf/m4/cf.m4"

#: m4 builtins, sendmail-cf macros and names proto.m4 uses that are also valid labels
#: (upper case ones are lower-cased by validation; test_m4_quote_raw_values keeps the case)
M4_WORDS = [
    "dnl", "divert", "undivert", "divnum", "define", "undefine", "defn", "pushdef", "popdef",
    "indir", "builtin", "include", "sinclude", "esyscmd", "syscmd", "sysval", "index", "len",
    "eval", "substr", "translit", "format", "incr", "decr", "shift", "ifdef", "ifelse",
    "changequote", "changecom", "errprint", "m4exit", "m4wrap", "unix", "linux", "gnu",
    "regexp", "patsubst", "mkstemp", "maketemp", "traceon", "traceoff", "dumpdef",
    "debugmode", "debugfile", "lower", "strcasecmp", "hpux", "relay", "esmtp", "smtp",
    "local", "OSTYPE", "MAILER", "FEATURE", "HACK", "DOMAIN", "DOL", "CONCAT", "SITE",
    "SITECONFIG", "VERSIONID", "TEMPFILE", "PUSHDIVERT", "POPDIVERT", "confEBINDIR",
    "confOPERATORS", "confFOO", "DS", "DAEMON",
]
#: the same hazards where a host name cannot carry them (underscore, '$', '(' ...)
RAW_WORDS = [*M4_WORDS, "SMART_HOST", "_ARG_", "_MAILER_smtp_", "confLOG_LEVEL",
             "ALIAS_FILE", "__file__", "__line__", "__gnu__", "__unix__", "$h", "$S", "#",
             "(", ")", ",", "esyscmd(touch SENTINEL)", "dnl(", "SMART_HOST(x)"]

# A word glued to digits or '-' is still an m4 token: "x-dnl" and "0dnl" expand dnl.
word_label = st.builds(lambda pre, word, post: f"{pre}{word}{post}",
                       st.sampled_from(["", "", "0", "x-", "9-"]), st.sampled_from(M4_WORDS),
                       st.sampled_from(["", "", "0", "-x", "-9"]))
any_label = st.from_regex(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", fullmatch=True)
#: starts with a letter, so the name never reads as a numeric address
last_label = st.one_of(word_label,
                       st.from_regex(r"[A-Za-z](?:[A-Za-z0-9-]{0,20}[A-Za-z0-9])?",
                                     fullmatch=True))
host_names = st.builds(
    lambda labels, last, dot: ".".join([*labels, last]) + dot,
    st.lists(st.one_of(word_label, any_label), max_size=4), last_label,
    st.sampled_from(["", "", "", "."]),
).filter(lambda name: len(name.removesuffix(".")) <= 253)
#: (what the caller sends, what validation must return)
named = host_names.map(lambda name: (name, name.lower().removesuffix(".")))
ipv4 = st.ip_addresses(v=4).flatmap(lambda a: st.sampled_from(
    [(str(a), f"[{a}]"), (f"[{a}]", f"[{a}]")]))


def _v6(a: ipaddress.IPv4Address | ipaddress.IPv6Address) -> st.SearchStrategy[tuple[str, str]]:
    assert isinstance(a, ipaddress.IPv6Address)
    want = f"[{a.ipv4_mapped}]" if a.ipv4_mapped else f"[IPv6:{a.compressed}]"
    return st.sampled_from([(str(a), want), (f"[IPv6:{a.compressed}]", want),
                            (f"[IPv6:{a.exploded.upper()}]", want), (f"[{a.exploded}]", want)])


ipv6 = st.ip_addresses(v=6).flatmap(_v6)


def compile_mc(mc: str) -> str:
    """Compile mc text with the real m4 and sendmail-cf; fail (never skip) without them."""
    m4 = shutil.which("m4")
    assert m4 is not None, "GNU m4 is required for this test (apt-get install m4)"
    assert Path(CF_M4).is_file(), f"{CF_M4} is required (apt-get install sendmail-cf)"
    proc = subprocess.run([m4], input=mc, capture_output=True, text=True, timeout=20,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == "", proc.stderr[-2000:]
    return proc.stdout


def build_mc(smart_host: str, port: int | None = None, smtp_args: bool = False) -> str:
    """A small but real Debian-style mc with SMART_HOST set to the m4 text ``smart_host``."""
    lines = [f"include(`{CF_M4}')dnl", "OSTYPE(`debian')dnl",
             f"define(`SMART_HOST', {smart_host})dnl"]
    if port is not None:
        names = ["RELAY", "ESMTP", *(["SMTP"] if smtp_args else [])]
        lines += [f"define(`{name}_MAILER_ARGS', `TCP $h {port}')dnl" for name in names]
    lines += ["MAILER(`local')dnl", "MAILER(`smtp')dnl"]
    return "\n".join(lines) + "\n"


#: a minimal real mc with no smarthost, for the product's mc editor to change
BASE_MC = (f"include(`{CF_M4}')dnl\nOSTYPE(`debian')dnl\n"
           "MAILER(`local')dnl\nMAILER(`smtp')dnl\n")


def ds_lines(cf: str) -> list[str]:
    return [line for line in cf.splitlines() if line.startswith("DS")]


def mailer_args(cf: str, mailer: str) -> str:
    """The A= value of one mailer definition in sendmail.cf."""
    lines = cf.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"M{mailer},"))
    for line in lines[start:]:
        if line is not lines[start] and not line.startswith("\t"):
            break
        for part in line.split(","):
            if part.strip().startswith("A="):
                return part.strip()[2:]
    raise AssertionError(f"no A= for mailer {mailer}")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.one_of(named, named, ipv4, ipv6), port=st.one_of(st.none(), st.just(25),
       st.integers(1, 65535)), mx=st.booleans(), mailer=st.sampled_from(MAILERS))
def test_every_accepted_host_compiles_verbatim(case: tuple[str, str], port: int | None,
                                               mx: bool, mailer: str) -> None:
    raw, host = case
    request = parse_smarthost_request({"host": raw, "port": port, "mx": mx, "mailer": mailer})
    assert request.host == host
    target = host if mx or host.startswith("[") else f"[{host}]"
    expected = target if mailer == "relay" else f"{mailer}:{target}"
    assert request.smart_host_value() == expected

    # The mc goes through the product's own editor, as a real change would.
    cf = compile_mc(set_smarthost_mc(BASE_MC, request))
    assert ds_lines(cf) == [f"DS{expected}"]
    assert read_cf(cf) == Smarthost.from_request(request)
    want_args = "TCP $h" if request.port is None else f"TCP $h {request.port}"
    for name in ["relay", "esmtp", *(["smtp"] if mailer == "smtp" else [])]:
        assert mailer_args(cf, name) == want_args


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(st.one_of(st.sampled_from(RAW_WORDS),
                                st.sampled_from(list(".:[]-_!%&*+=?@^{|}~/<>;"))),
                      min_size=1, max_size=8))
def test_m4_quote_raw_values(parts: list[str]) -> None:
    """m4_quote alone carries any value without quotes, line ends or $0-$9/$#/$*/$@."""
    value = "".join(parts)
    try:
        quoted = m4_quote(value)
    except ValueError:
        assert any(f"${c}" in value for c in "0123456789#*@")
        return
    assert ds_lines(compile_mc(build_mc(quoted))) == [f"DS{value}"]


@pytest.mark.parametrize("value, broken", [
    ("dnl.example.com", "DS"),
    ("[dnl.example.com]", "DS["),
    ("divert.example.com", "DS.example.com"),
    ("[divert.example.com]", "DS[.example.com]"),
    ("esmtp:[x-dnl.example]", "DSesmtp:[x-"),
    ("relay:[m4exit.example]", "DSrelay:["),
    ("[changequote.example]", "DS[.example]"),
    ("[strcasecmp.example]", "DS[1.example]"),
])
def test_single_quoting_breaks_and_double_quoting_does_not(value: str, broken: str) -> None:
    """Why m4_quote doubles the quotes: with one level m4 runs the builtin in the label."""
    assert ds_lines(compile_mc(build_mc(f"`{value}'"))) == [broken]
    assert ds_lines(compile_mc(build_mc(m4_quote(value)))) == [f"DS{value}"]


def test_m4_substitutes_argument_references_even_inside_quotes() -> None:
    """Why m4_quote refuses $1, $#, $*, $@: quoting does not stop m4 replacing them."""
    assert ds_lines(compile_mc(build_mc("``a$1b$#c''"))) == ["DSab0c"]
    with pytest.raises(ValueError):
        m4_quote("a$1b")


HOSTILE = [
    "x')esyscmd(`touch {s}')dnl(`",
    "x`'esyscmd(`touch {s}')",
    "esyscmd(touch {s})",
    "x')syscmd(touch {s})dnl(`",
    "smarthost\n')esyscmd(`touch {s}')dnl(`",
    "[IPv6:fe80::1%x')esyscmd(`touch {s}')dnl(`]",
    "fe80::1%')esyscmd(`touch {s}')dnl(`",
    "esmtp:x')esyscmd(`touch {s}')dnl(`",
]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_hosts_are_refused_and_never_run(tmp_path: Path, hostile: str) -> None:
    sentinel = tmp_path / "SENTINEL"
    value = hostile.format(s=sentinel)
    with pytest.raises(ValidationError) as caught:
        parse_smarthost_request({"host": value})
    assert list(caught.value.errors) == ["host"]
    with pytest.raises(ValidationError):
        SmarthostRequest(host=value)
    if any(ch in value for ch in "`'\n"):
        with pytest.raises(ValueError):
            m4_quote(value)
    assert not sentinel.exists()


def test_hostile_credentials_are_refused(tmp_path: Path) -> None:
    sentinel = tmp_path / "SENTINEL"
    with pytest.raises(ValidationError) as caught:
        parse_smarthost_request({"host": "relay.example", "auth": {
            "username": f"x')esyscmd(`touch {sentinel}')", "password": "p\nss"}})
    assert set(caught.value.errors) == {"auth.username", "auth.password"}
    assert not sentinel.exists()


def test_m4_quote_neutralises_a_macro_call(tmp_path: Path) -> None:
    """Even text m4 would run is inert once m4_quote has quoted it."""
    sentinel = tmp_path / "SENTINEL"
    value = f"esyscmd(touch {sentinel})"
    assert ds_lines(compile_mc(build_mc(m4_quote(value)))) == [f"DS{value}"]
    assert not sentinel.exists()


def test_the_injection_is_real_without_validation(tmp_path: Path) -> None:
    """The threat the refusals guard against: the same text, unvalidated, runs a command."""
    sentinel = tmp_path / "SENTINEL"
    evil = HOSTILE[0].format(s=sentinel)
    proc = subprocess.run(["m4"], input=build_mc(f"`{evil}'"), capture_output=True, text=True,
                          timeout=20, check=False)
    assert proc.returncode == 0
    assert sentinel.exists()
