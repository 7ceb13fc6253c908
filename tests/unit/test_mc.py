"""sendmail.mc editing and sendmail.cf reading (pure text)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.sendmail import authinfo
from shared.sendmail.mc import (
    MARK,
    Smarthost,
    read_cf,
    read_mc,
    remove_smarthost_mc,
    set_smarthost_mc,
    unified_diff,
)
from shared.validation import parse_smarthost_request

FIXTURES = Path(__file__).parent.parent / "fixtures" / "sendmail"
DEBIAN_MC = (FIXTURES / "debian-sendmail.mc").read_text()
CENTOS_MC = (Path(__file__).parent.parent / "lab" / "files" / "centos-sendmail.mc").read_text()


def req(**kw: object) -> object:
    return parse_smarthost_request({"host": "relay.example.net", **kw})


def active(mc: str) -> list[str]:
    return [ln for ln in mc.splitlines() if ln.startswith("define(`SMART_HOST'")]


def test_debian_insert_goes_before_the_mailers() -> None:
    new = set_smarthost_mc(DEBIAN_MC, req(port=2525))
    lines = new.splitlines()
    at = lines.index(active(new)[0])
    first_mailer = next(i for i, ln in enumerate(lines) if ln.startswith("MAILER"))
    assert at < first_mailer
    assert lines[at + 1] == f"define(`RELAY_MAILER_ARGS', `TCP $h 2525'){MARK}"
    assert lines[at + 2] == f"define(`ESMTP_MAILER_ARGS', `TCP $h 2525'){MARK}"
    assert len(active(new)) == 1


def test_centos_template_line_becomes_the_active_define() -> None:
    new = set_smarthost_mc(CENTOS_MC, req())
    old_lines = CENTOS_MC.splitlines()
    template_at = next(i for i, ln in enumerate(old_lines)
                       if ln.startswith("dnl define(`SMART_HOST'"))
    assert new.splitlines()[template_at].startswith("define(`SMART_HOST', ``[relay.example.net]''")
    assert len(new.splitlines()) == len(old_lines)
    assert len(active(new)) == 1


def test_duplicate_active_defines_collapse_to_one() -> None:
    mc = DEBIAN_MC.replace("MAILER_DEFINITIONS",
                           "define(`SMART_HOST', `a.example')dnl\n"
                           "define(`SMART_HOST',`b.example')dnl\nMAILER_DEFINITIONS")
    assert read_mc(mc).active_defines == 2
    new = set_smarthost_mc(mc, req())
    assert len(active(new)) == 1 and read_mc(new).active_defines == 1


def test_setting_is_idempotent_and_reversible() -> None:
    for mc in (DEBIAN_MC, CENTOS_MC):
        once = set_smarthost_mc(mc, req(port=587, auth={"username": "u", "password": "p4ss"}))
        assert set_smarthost_mc(once, req(port=587, auth={"username": "u", "password": "p4ss"})) \
            == once
        changed = set_smarthost_mc(once, req(host="other.example.net"))
        assert "RELAY_MAILER_ARGS" not in changed and "FEATURE(`authinfo')" not in changed
        removed = remove_smarthost_mc(once)
        assert read_mc(removed).smarthost is None
        assert MARK not in removed
        assert remove_smarthost_mc(removed) == removed


def test_foreign_define_is_commented_not_deleted() -> None:
    mc = CENTOS_MC.replace("dnl define(`SMART_HOST', `smtp.your.provider')dnl",
                           "define(`SMART_HOST', `smtp.your.provider')dnl")
    removed = remove_smarthost_mc(mc)
    assert "dnl define(`SMART_HOST', `smtp.your.provider')dnl" in removed
    assert read_mc(removed).smarthost is None


def test_read_mc_understands_prefixes_brackets_ports_and_auth() -> None:
    mc = ("define(`SMART_HOST', `esmtp:[mail.example.org]')dnl\n"
          "define(`ESMTP_MAILER_ARGS', `TCP $h 587')dnl\nFEATURE(`authinfo')dnl\nMAILER(smtp)\n")
    state = read_mc(mc)
    assert state.smarthost == Smarthost("mail.example.org", 587, mx=False, mailer="esmtp")
    assert state.authinfo_feature
    assert read_mc("dnl define(`SMART_HOST', `x')dnl\n").smarthost is None
    assert read_mc("define(`SMART_HOST', `relay.example.org')\n").smarthost == Smarthost(
        "relay.example.org", 25, mx=True)


def test_read_cf_finds_ds_and_the_mailer_port() -> None:
    cf = ("DS[smarthost.lab.test]\n"
          "Mrelay,\t\tP=[IPC], F=mDFMuXa8k, S=EnvFromSMTP/HdrFromSMTP, R=MasqSMTP, E=\\r\\n,\n"
          "\t\tT=DNS/RFC822/SMTP,\n\t\tA=TCP $h 2525\n")
    assert read_cf(cf) == Smarthost("smarthost.lab.test", 2525, mx=False)
    assert read_cf("DS\n") is None
    assert read_cf("DS[10.0.0.1]\n") == Smarthost("[10.0.0.1]", 25, mx=False)


def test_unified_diff_is_empty_when_equal() -> None:
    assert unified_diff("a\n", "a\n", "/etc/mail/sendmail.mc") == ""
    diff = unified_diff("a\n", "b\n", "/etc/mail/sendmail.mc")
    assert "-a\n+b\n" in diff


@pytest.mark.parametrize("host", ["relay.example.net", "[192.0.2.7]"])
def test_authinfo_entries(host: str) -> None:
    text = authinfo.set_entry("AuthInfo:other \"U:x\"\n", host, "user@x", "pw")
    assert authinfo.username_for(text, host) == "user@x"
    assert text.count("AuthInfo:") == 2
    again = authinfo.set_entry(text, host, "user@x", "pw")
    assert again == text
    assert authinfo.remove_entry(text, host) == "AuthInfo:other \"U:x\"\n"
