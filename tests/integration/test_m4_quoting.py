"""Every host name the API accepts compiles to exactly that host in sendmail.cf (real m4)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.errors import ValidationError
from shared.sendmail.mc import read_cf, set_smarthost_mc
from shared.validation import SmarthostRequest, parse_smarthost_request

CF_M4 = "/usr/share/sendmail/cf/m4/cf.m4"
BASE_MC = (f"include(`{CF_M4}')dnl\nOSTYPE(`debian')dnl\n"
           "MAILER(`local')dnl\nMAILER(`smtp')dnl\n")
#: m4 builtins and sendmail-cf macro names that are also valid DNS labels
M4_WORDS = ["dnl", "divert", "define", "undefine", "include", "sinclude", "esyscmd", "syscmd",
            "index", "len", "eval", "substr", "translit", "format", "incr", "decr", "shift",
            "ifdef", "ifelse", "changequote", "changecom", "errprint", "m4exit", "unix",
            "linux", "regexp", "patsubst", "undivert", "divnum", "defn", "pushdef", "popdef",
            "indir", "builtin", "mkstemp", "maketemp", "traceon", "dumpdef", "m4wrap",
            "OSTYPE", "MAILER", "FEATURE", "HACK", "DOMAIN", "DS", "VERSIONID", "confLOG-LEVEL"]
label = st.one_of(
    st.sampled_from(M4_WORDS),
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True),
)
hostname = st.lists(label, min_size=1, max_size=5).map(".".join).filter(lambda h: len(h) <= 253)
ipv4 = st.ip_addresses(v=4).map(lambda a: f"[{a}]")
ipv6 = st.ip_addresses(v=6).map(lambda a: f"[IPv6:{a}]")


def compile_mc(mc: str, tmp: Path) -> str:
    path = tmp / "test.mc"
    path.write_text(mc)
    proc = subprocess.run(["m4", str(path)], capture_output=True, text=True, timeout=30,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def ds_lines(cf: str) -> list[str]:
    return re.findall(r"^DS.*$", cf, re.M)


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(host=st.one_of(hostname, ipv4, ipv6), port=st.one_of(st.none(), st.integers(1, 65535)),
       mx=st.booleans(), mailer=st.sampled_from(["relay", "esmtp", "smtp"]))
def test_accepted_names_compile_verbatim(tmp_path: Path, host: str, port: int | None, mx: bool,
                                         mailer: str) -> None:
    try:
        request = parse_smarthost_request({"host": host, "port": port, "mx": mx,
                                           "mailer": mailer})
    except ValidationError as exc:
        # Only refusals with a reason are allowed, never a crash; note which.
        assert exc.errors.get("host"), exc
        return
    cf = compile_mc(set_smarthost_mc(BASE_MC, request), tmp_path)
    assert ds_lines(cf) == [f"DS{request.smart_host_value()}"]
    compiled = read_cf(cf)
    assert compiled is not None
    assert compiled.port == (request.port or 25)
    if request.port:
        for name in ("relay", "esmtp"):
            block = re.search(rf"^M{name},.*?(?=^M|\Z)", cf, re.S | re.M)
            assert block and f"A=TCP $h {request.port}" in block.group(0)


@pytest.mark.parametrize("host", ["dnl.example.com", "divert.example.com"])
def test_single_quoting_would_break(tmp_path: Path, host: str) -> None:
    """Why m4_quote doubles the quotes: with one level m4 expands the builtin label."""
    single = BASE_MC.replace("MAILER(`local')", f"define(`SMART_HOST', `{host}')dnl\n"
                             "MAILER(`local')", 1)
    assert ds_lines(compile_mc(single, tmp_path)) != [f"DS{host}"]
    request = SmarthostRequest(host=host, mx=True)
    assert ds_lines(compile_mc(set_smarthost_mc(BASE_MC, request), tmp_path)) == [f"DS{host}"]


@pytest.mark.parametrize("hostile", [
    "x')esyscmd(`touch {s}')dnl(`",
    "x`'esyscmd(`touch {s}')",
    "esyscmd(touch {s})",
    "x')syscmd(touch {s})dnl(`",
    "smarthost\n')esyscmd(`touch {s}')",
])
def test_injection_never_reaches_m4(tmp_path: Path, hostile: str) -> None:
    sentinel = tmp_path / "sentinel"
    with pytest.raises(ValidationError) as caught:
        parse_smarthost_request({"host": hostile.format(s=sentinel)})
    assert "host" in caught.value.errors
    assert not sentinel.exists()


def test_m4_really_would_run_the_injection(tmp_path: Path) -> None:
    """The threat is real: the same text, unvalidated, makes GNU m4 run a command."""
    sentinel = tmp_path / "sentinel"
    evil = f"x')esyscmd(`touch {sentinel}')dnl(`"
    compile_mc(BASE_MC.replace("MAILER(`local')", f"define(`SMART_HOST', `{evil}')dnl\n"
                               "MAILER(`local')", 1), tmp_path)
    assert sentinel.exists()
