"""Relay-grade sendmail: the base64 AUTH password, TLS_Srv requirements in the access map,
CA settings, masquerading, and the change transaction carrying the access map (fakes)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from shared.mta import FlushRequest, MtaOperations, operations_for
from shared.profile import build_profile
from shared.results import OperationResult
from shared.sendmail import authinfo as authmap
from shared.sendmail.mc import (
    DISABLED,
    MARK,
    Masquerading,
    access_source,
    in_sync,
    needs_ca_bundle,
    read_cf_masquerade,
    read_mc,
    remove_smarthost_mc,
    set_smarthost_mc,
)
from shared.testing import (
    SMMSP_GID,
    FakeSendmailHost,
    FileState,
    RelayTls,
    debian_sendmail_host,
    fake_m4,
    fixture_text,
    rhel_sendmail_host,
)
from shared.validation import SmarthostRequest, TlsPolicy, parse_smarthost_request

MAIL = "/etc/mail"
MC, CF, ACCESS, AUTHINFO = (f"{MAIL}/sendmail.mc", f"{MAIL}/sendmail.cf", f"{MAIL}/access",
                            f"{MAIL}/authinfo")
BACKUPS = f"{MAIL}/.relayfleet-backup"
RELAY = "relay.lab.test"
PASSWORD = 'p@ss "w rd\\x'
USER = "pbx-0042@customer.example"
AUTH = {"username": USER, "password": PASSWORD}
CA_FILE = "/etc/mail/tls/lab-ca.pem"
DEBIAN_MC = fixture_text("debian-sendmail.mc")
CENTOS_MC = fixture_text("centos-sendmail.mc")
#: a CentOS-style mc without FEATURE(access_db), greet_pause among its features
NO_ACCESS_DB_MC = (
    "include(`/usr/share/sendmail/cf/m4/cf.m4')dnl\nOSTYPE(`linux')dnl\n"
    "FEATURE(`greet_pause', `1000')dnl\nFEATURE(use_cw_file)dnl\n"
    "MAILER(local)dnl\nMAILER(smtp)dnl\n")
CF_M4 = "include(`/usr/share/sendmail/cf/m4/cf.m4')dnl\n"


def request(**extra: Any) -> SmarthostRequest:
    return parse_smarthost_request({"host": RELAY, "port": 587, **extra})


def ops_for(host: FakeSendmailHost) -> MtaOperations:
    return operations_for(host, build_profile("sendmail", host.flavour, {}))


def ours(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.endswith(MARK)]


def config_state(host: FakeSendmailHost) -> dict[str, FileState]:
    return {p: s for p, s in host.snapshot(MAIL).items() if not p.startswith(BACKUPS)}


def fixture_access(host: FakeSendmailHost) -> str:
    """The access map the fake Debian host starts with."""
    return "localhost\tRELAY\n127.0.0.1\tRELAY\n"


def cf_has(host: FakeSendmailHost, *lines: str) -> bool:
    return set(lines) <= set(host.read_text(CF).splitlines())


def secret_free(result: OperationResult) -> OperationResult:
    dumped = json.dumps(result.to_dict())
    encoded = base64.b64encode(PASSWORD.encode()).decode()
    assert PASSWORD not in dumped and json.dumps(PASSWORD)[1:-1] not in dumped
    assert encoded not in dumped
    return result


# -- authinfo: the base64 password -----------------------------------------------------------


def test_the_password_is_written_in_base64_and_the_user_name_still_reads() -> None:
    text = authmap.set_entry("AuthInfo:other.example \"U:x\" \"P:y\"\n", RELAY, USER, PASSWORD)
    line = text.splitlines()[-1]
    encoded = base64.b64encode(PASSWORD.encode()).decode()
    assert line == (f'AuthInfo:{RELAY} "U:{USER}" "I:{USER}" "P={encoded}" '
                    '"M:PLAIN LOGIN"')
    assert base64.b64decode(encoded).decode() == PASSWORD and PASSWORD not in text
    assert text.splitlines()[0] == 'AuthInfo:other.example "U:x" "P:y"'
    assert authmap.username_for(text, RELAY) == USER
    # makemap folds keys to lower case: an entry written in capitals is the same entry
    again = authmap.set_entry(text.replace(RELAY, RELAY.upper()), RELAY, "new", "pw")
    assert authmap.username_for(again, RELAY) == "new" and len(again.splitlines()) == 2
    assert authmap.remove_entry(again, RELAY, "other.example") == ""


# -- the access map: TLS_Srv entries -----------------------------------------------------------


def test_the_tls_entry_is_ours_and_every_other_access_line_is_kept() -> None:
    users = "# mine\nConnect:127\t\tRELAY\nTLS_Srv:partner.example\tENCR:128\nSpam:abuse@\tFRIEND\n"
    encrypt = authmap.set_tls_entry(users, RELAY, "encrypt")
    assert encrypt == users + f"TLS_Srv:{RELAY}\tENCR:112\n"
    # replaced where it was, not appended again
    verify = authmap.set_tls_entry(encrypt + "reject@\tREJECT\n", RELAY, "verify")
    assert verify == users + f"TLS_Srv:{RELAY}\tVERIFY:112+CN\nreject@\tREJECT\n"
    assert authmap.set_tls_entry(verify, RELAY, "may") == users + "reject@\tREJECT\n"
    # a former smarthost's entry goes; a literal's key has no brackets
    moved = authmap.set_tls_entry(encrypt, "[192.0.2.7]", "encrypt", drop=(RELAY,))
    assert moved == users + "TLS_Srv:192.0.2.7\tENCR:112\n"
    assert authmap.remove_tls_entry(moved, "[192.0.2.7]") == users
    assert authmap.tls_key("[IPv6:2001:db8::1]") == "TLS_Srv:IPv6:2001:db8::1"


@pytest.mark.parametrize(("value", "mode"), [
    ("ENCR:112", "encrypt"), ("VERIFY:112+CN", "verify"), ("PERM+VERIFY+CN++CITag:MyCA", "verify"),
    ("VERIFY:112+CN:relay.lab.test", "verify"), ("VERIFY:128", "encrypt"),
    ("TEMP+ENCR:256", "encrypt"), ("OK", "may"), (None, "may")])
def test_the_tls_mode_is_read_back_from_the_entry(value: str | None, mode: str) -> None:
    text = "Connect:127\tRELAY\n" + (f"tls_srv:{RELAY.upper()}\t{value}\n" if value else "")
    assert authmap.tls_mode_for(text, RELAY) == mode


# -- sendmail.mc: TLS lines ------------------------------------------------------------------


def test_encrypt_on_debian_needs_no_mc_line_beyond_the_smarthost() -> None:
    # Debian's mc has FEATURE(`access_db', , `skip') already; encrypt needs no CA
    new = set_smarthost_mc(DEBIAN_MC, request(auth=AUTH))
    names = [ln.split("(", 1)[1].split(",")[0].split(")")[0].strip("`'") for ln in ours(new)]
    assert names == ["SMART_HOST", "RELAY_MAILER_ARGS", "ESMTP_MAILER_ARGS",
                     "confAUTH_MECHANISMS", "authinfo"]
    assert read_mc(new).access_db == "" and read_mc(new).ca_file is None
    assert access_source(read_mc(new).access_db or "", MAIL) == ACCESS


def test_an_mc_without_access_db_gets_ours_before_its_first_feature() -> None:
    new = set_smarthost_mc(NO_ACCESS_DB_MC, request(tls={"mode": "encrypt"}))
    lines = new.splitlines()
    assert lines[2] == f"FEATURE(`access_db'){MARK}"
    assert lines[3] == "FEATURE(`greet_pause', `1000')dnl"  # greet_pause reads it then
    assert read_mc(new).access_db == "" and remove_smarthost_mc(new) == NO_ACCESS_DB_MC
    # opportunistic TLS is sendmail's default: no access map needed
    assert "access_db" not in set_smarthost_mc(NO_ACCESS_DB_MC, request())


def test_verify_with_a_ca_file_names_it_and_its_directory_and_checks_altnames() -> None:
    new = set_smarthost_mc(CENTOS_MC, request(auth=AUTH, tls={"mode": "verify",
                                                                "ca_file": CA_FILE}))
    assert ours(new)[-3:] == [
        f"FEATURE(`check_cert_altnames'){MARK}",
        f"define(`confCACERT_PATH', ``/etc/mail/tls''){MARK}",
        f"define(`confCACERT', ``{CA_FILE}''){MARK}"]
    assert read_mc(new).ca_file == CA_FILE
    compiled = fake_m4(new).output.splitlines()
    assert {"O CACertPath=/etc/mail/tls", f"O CACertFile={CA_FILE}",
            "O SetCertAltnames=true"} <= set(compiled)
    assert not needs_ca_bundle(new, TlsPolicy("verify", CA_FILE))


def test_verify_without_a_ca_file_uses_the_hosts_bundle_unless_the_mc_names_a_ca() -> None:
    policy = TlsPolicy("verify")
    assert needs_ca_bundle(CENTOS_MC, policy) and not needs_ca_bundle(CENTOS_MC,
                                                                     TlsPolicy("encrypt"))
    bundle = "/etc/pki/tls/certs/ca-bundle.crt"
    new = set_smarthost_mc(CENTOS_MC, request(tls={"mode": "verify"}), bundle)
    assert ours(new)[-2:] == [f"define(`confCACERT_PATH', ``/etc/pki/tls/certs''){MARK}",
                              f"define(`confCACERT', ``{bundle}''){MARK}"]
    with pytest.raises(ValueError, match="bundle"):
        set_smarthost_mc(CENTOS_MC, request(tls={"mode": "verify"}))
    # Debian's starttls.m4 sets both (CA directory /etc/ssl/certs): left as it is
    tls_mc = DEBIAN_MC.replace("MAILER_DEFINITIONS\n", "MAILER_DEFINITIONS\n"
                               "include(`/etc/mail/tls/starttls.m4')dnl\n")
    assert not needs_ca_bundle(tls_mc, policy)
    assert "confCACERT" not in "".join(ours(set_smarthost_mc(tls_mc, request(
        tls={"mode": "verify"}))))
    # sendmail loads CAs only with both set: a path alone gets the bundle file added
    path_only = CENTOS_MC.replace("MAILER(local)", "define(`confCACERT_PATH', `/etc/x')dnl\n"
                                  "MAILER(local)")
    added = ours(set_smarthost_mc(path_only, request(tls={"mode": "verify"}), bundle))
    assert added[-1] == f"define(`confCACERT', ``{bundle}''){MARK}"
    assert not any("confCACERT_PATH" in ln for ln in added)


def test_a_ca_file_is_defined_after_a_tls_include_that_comes_later() -> None:
    # m4: the last definition wins; Debian's starttls.m4 defines confCACERT itself
    tls_mc = DEBIAN_MC + "include(`/etc/mail/tls/starttls.m4')dnl\n"
    new = set_smarthost_mc(tls_mc, request(tls={"mode": "verify", "ca_file": CA_FILE}))
    assert new.endswith("include(`/etc/mail/tls/starttls.m4')dnl\n"
                        f"define(`confCACERT', ``{CA_FILE}''){MARK}\n")
    assert remove_smarthost_mc(new) == remove_smarthost_mc(tls_mc)


def test_access_db_specs() -> None:
    assert access_source("", MAIL) == ACCESS
    assert access_source("hash -T<TMPF> -o /etc/mail/access.db", MAIL) == ACCESS
    assert access_source("btree /srv/mail/access", MAIL) == "/srv/mail/access"
    assert access_source("LDAP", MAIL) is None
    assert read_mc(CENTOS_MC).access_db == "hash -T<TMPF> -o /etc/mail/access.db"
    assert read_mc(NO_ACCESS_DB_MC).access_db is None


# -- sendmail.mc: masquerade -------------------------------------------------------------------


def test_masquerade_lines_and_their_quoting() -> None:
    new = set_smarthost_mc(DEBIAN_MC, request(masquerade={"domain": "ourtest.com"}))
    assert ours(new)[-2:] == [f"MASQUERADE_AS(```ourtest.com'''){MARK}",
                              f"FEATURE(`masquerade_envelope'){MARK}"]
    assert read_mc(new).masquerade == Masquerading("ourtest.com", envelope=True)
    headers_only = set_smarthost_mc(new, request(masquerade={"domain": "ourtest.com",
                                                             "envelope": False}))
    assert "masquerade_envelope" not in headers_only
    assert read_mc(headers_only).masquerade == Masquerading("ourtest.com", envelope=False)
    # absent from the request: ours go (the request is the whole relay setting)
    assert read_mc(set_smarthost_mc(new, request())).masquerade is None
    # m4 words compile to exactly the domain (MASQUERADE_AS rescans its argument twice)
    for domain in ("dnl.example.com", "divert.example.com", "x.include"):
        mc = set_smarthost_mc(CF_M4 + "MAILER(`smtp')dnl\n",
                              request(masquerade={"domain": domain}))
        compiled = fake_m4(mc).output
        assert read_cf_masquerade(compiled) == Masquerading(domain, envelope=True), domain


def test_a_hand_written_masquerade_is_replaced_only_when_one_is_requested() -> None:
    mine = CENTOS_MC.replace("dnl MASQUERADE_AS(`mydomain.com')dnl",
                             "MASQUERADE_AS(`pbx.example')dnl\nFEATURE(masquerade_envelope)dnl")
    assert read_mc(mine).masquerade == Masquerading("pbx.example", envelope=True)
    kept = set_smarthost_mc(mine, request())
    assert read_mc(kept).masquerade == Masquerading("pbx.example", envelope=True)
    assert remove_smarthost_mc(kept).count("MASQUERADE_AS(`pbx.example')dnl\n") == 1
    replaced = set_smarthost_mc(mine, request(masquerade={"domain": "ourtest.com",
                                                          "envelope": False}))
    assert (f"{DISABLED}MASQUERADE_AS(`pbx.example')dnl\n"
            f"{DISABLED}FEATURE(masquerade_envelope)dnl\n") in replaced
    assert read_mc(replaced).masquerade == Masquerading("ourtest.com", envelope=False)
    assert set_smarthost_mc(replaced, request(masquerade={"domain": "ourtest.com",
                                                          "envelope": False})) == replaced
    # the host's own lines come back as they were: on a change without masquerade, on removal
    assert set_smarthost_mc(replaced, request()) == kept
    assert remove_smarthost_mc(replaced) == remove_smarthost_mc(kept)
    assert read_mc(remove_smarthost_mc(replaced)).masquerade == Masquerading("pbx.example",
                                                                             envelope=True)


def test_the_hosts_masquerade_is_back_byte_for_byte_after_ours_is_removed() -> None:
    host = rhel_sendmail_host()
    mine = host.read_text(MC).replace(
        "dnl MASQUERADE_AS(`mydomain.com')dnl",
        "MASQUERADE_AS(`corp.com')dnl  \nFEATURE(masquerade_envelope)dnl")
    host.write_file(MC, mine.encode())
    ops = ops_for(host)
    assert ops.set_smarthost(request()).ok
    plain = host.read_text(MC)
    masq = ops.set_smarthost(request(masquerade={"domain": "ourtest.com"}))
    assert masq.ok, masq.error
    assert f"+{DISABLED}MASQUERADE_AS(`corp.com')dnl  \n" in masq.data["diff"]
    assert cf_has(host, "DMourtest.com")
    back = ops.set_smarthost(request())
    assert back.ok and back.changed and host.read_text(MC) == plain
    assert cf_has(host, "DMcorp.com")
    assert ops.set_smarthost(request(masquerade={"domain": "ourtest.com"})).ok
    removed = ops.remove_smarthost()
    assert removed.ok, removed.error
    assert host.read_text(MC) == remove_smarthost_mc(plain)
    assert "MASQUERADE_AS(`corp.com')dnl  \nFEATURE(masquerade_envelope)dnl\n" in host.read_text(MC)
    assert removed.data["config_in_sync"] is True and cf_has(host, "DMcorp.com")


# -- the change transaction ----------------------------------------------------------------


def test_set_writes_the_access_entry_and_shows_its_diff_not_the_password() -> None:
    host = debian_sendmail_host()
    # Debian's: smmta:smmsp 0640
    host.add_file(ACCESS, fixture_access(host), mode=0o640, uid=112, gid=SMMSP_GID)
    access_before = host.state(ACCESS)
    result = secret_free(ops_for(host).set_smarthost(request(auth=AUTH)))
    assert result.ok and result.changed, result.error
    diff = result.data["diff"]
    assert f"+++ {ACCESS} (new)\n" in diff and f"+TLS_Srv:{RELAY}\tENCR:112\n" in diff
    assert f"--- {AUTHINFO} (current)\n+++ {AUTHINFO} (new)\n@@ credentials entry" in diff
    assert host.read_text(ACCESS) == fixture_access(host) + f"TLS_Srv:{RELAY}\tENCR:112\n"
    # the access map keeps its owner and mode (not authinfo's 0600 root)
    after = host.state(ACCESS)
    assert access_before is not None and after is not None
    assert (after.mode, after.uid, after.gid) == (access_before.mode, access_before.uid,
                                                  access_before.gid)
    assert host.read_text(f"{ACCESS}.db").endswith(f"TLS_Srv:{RELAY}\tENCR:112\n")
    assert result.data["smarthost"]["tls"] == {"mode": "encrypt", "ca_file": None}
    assert result.data["smarthost"]["masquerade"] is None
    assert "swap" in [s.name for s in result.steps]
    assert next(s for s in result.steps if s.name == "swap").output == (
        "installed new authinfo, access, sendmail.mc, sendmail.cf")


def test_a_tls_only_or_masquerade_only_change_is_a_change() -> None:
    host = debian_sendmail_host()
    ops = ops_for(host)
    assert ops.set_smarthost(request()).ok
    same = ops.set_smarthost(request())
    assert same.ok and same.changed is False and same.data["diff"] == ""
    tls = ops.set_smarthost(request(tls={"mode": "encrypt"}))
    assert tls.ok and tls.changed, tls.error
    assert tls.data["diff"].startswith(f"--- {ACCESS} (current)")  # sendmail.mc unchanged
    assert ops.read_smarthost().data["smarthost"]["tls"]["mode"] == "encrypt"
    masq = ops.set_smarthost(request(tls={"mode": "encrypt"},
                                     masquerade={"domain": "ourtest.com"}))
    assert masq.ok and masq.changed and f"+MASQUERADE_AS(```ourtest.com'''){MARK}" in masq.data[
        "diff"]
    status = ops.status()
    assert status.data["smarthost"]["masquerade"] == {"domain": "ourtest.com", "envelope": True}
    assert status.data["config_in_sync"] is True
    # a cf compiled without the masquerade (m4 run on an older mc): out of sync
    older = "".join(ln for ln in host.read_text(MC).splitlines(keepends=True)
                    if "MASQUERADE_AS" not in ln)
    host.write_file(CF, host.compile_mc(older).output.encode())
    assert ops.read_smarthost().data["config_in_sync"] is False
    recompiled = ops.set_smarthost(request(tls={"mode": "encrypt"},
                                           masquerade={"domain": "ourtest.com"}))
    assert recompiled.ok and recompiled.changed and recompiled.data["diff"] == ""
    assert "will be recompiled" in recompiled.data["note"]
    assert cf_has(host, "DMourtest.com") and recompiled.data["config_in_sync"] is True


def test_a_change_cut_short_before_the_cf_rename_is_finished_on_retry() -> None:
    # sendmail.mc and the maps already new, sendmail.cf still compiled from the former mc
    host = debian_sendmail_host(messages=[])
    host.add_file(CA_FILE, "-----BEGIN CERTIFICATE-----\n")
    ops = ops_for(host)
    assert ops.set_smarthost(request(auth=AUTH)).ok
    encrypt_cf = host.read_file(CF)
    verify = request(auth=AUTH, tls={"mode": "verify", "ca_file": CA_FILE})
    assert ops.set_smarthost(verify).ok
    host.write_file(CF, encrypt_cf)
    host.queue_message(["me@ourtest.com"])
    # no CA settings in the cf: the certificate cannot verify and mail waits
    assert [d["text"] for d in flush(host).data["deliveries"]] == [
        "Deferred: 454 4.7.0 authentication failed"]
    assert ops.read_smarthost().data["config_in_sync"] is False
    again = secret_free(ops.set_smarthost(verify))
    assert again.ok and again.changed and again.data["diff"] == "", again.error
    assert "will be recompiled" in again.data["note"]
    assert again.data["config_in_sync"] is True
    assert cf_has(host, f"O CACertFile={CA_FILE}", "O SetCertAltnames=true")
    flush(host)
    assert [(m.auth_user, m.tls) for m in host.relayed] == [(USER, True)]
    assert ops.set_smarthost(verify).changed is False


@pytest.mark.parametrize(("line", "present"), [
    (f"define(`confCACERT', ``{CA_FILE}''){MARK}", f"O CACertFile={CA_FILE}"),
    (f"define(`confCACERT_PATH', ``/etc/mail/tls''){MARK}", "O CACertPath=/etc/mail/tls"),
    (f"FEATURE(`check_cert_altnames'){MARK}", "O SetCertAltnames=true"),
    (f"FEATURE(`access_db'){MARK}", "Kaccess hash -T<TMPF> -o /etc/mail/access.db"),
    ("FEATURE(`authinfo')dnl", "Kauthinfo hash -o /etc/mail/authinfo.db")])
def test_a_cf_without_what_the_mc_asks_for_is_out_of_sync(line: str, present: str) -> None:
    mc = set_smarthost_mc(NO_ACCESS_DB_MC, request()).replace(
        "MAILER(local)", f"{line}\nMAILER(local)")
    cf = fake_m4(mc).output
    assert present in cf.splitlines() and in_sync(read_mc(mc), cf)
    assert not in_sync(read_mc(mc), cf.replace(f"{present}\n", ""))
    # a map or option the mc's own lines do not ask for (an include's) is no mismatch
    assert in_sync(read_mc(mc.replace(line, "dnl")), cf)


def test_an_access_map_that_is_not_utf8_keeps_its_bytes() -> None:
    host = debian_sendmail_host()
    theirs = b"# \xe9quipe r\xe9seau\nConnect:127\tRELAY\n"
    host.write_file(ACCESS, theirs)
    ops = ops_for(host)
    done = ops.set_smarthost(request(tls={"mode": "encrypt"}))
    assert done.ok, done.error
    assert host.read_file(ACCESS) == theirs + f"TLS_Srv:{RELAY}\tENCR:112\n".encode()
    assert host.read_file(f"{ACCESS}.db").endswith(theirs + f"TLS_Srv:{RELAY}\tENCR:112\n".encode())
    json.dumps(done.to_dict())  # the diff shows the bytes replaced, and stays JSON
    assert f"+TLS_Srv:{RELAY}\tENCR:112\n" in done.data["diff"]
    assert ops.remove_smarthost().ok and host.read_file(ACCESS) == theirs


def test_rollback_restores_the_access_map_byte_for_byte() -> None:
    host = debian_sendmail_host()
    assert ops_for(host).set_smarthost(request(tls={"mode": "encrypt"})).ok
    host.add_file(CA_FILE, "-----BEGIN CERTIFICATE-----\n")
    before = config_state(host)
    host.script(["make"], exit_code=2, stderr="make: *** [Makefile:10: all] Error 1", times=1)
    result = secret_free(ops_for(host).set_smarthost(request(
        auth=AUTH, tls={"mode": "verify", "ca_file": CA_FILE},
        masquerade={"domain": "ourtest.com"})))
    assert result.ok is False and result.rolled_back is True, result.error
    assert ACCESS in result.data["restored"] and f"{ACCESS}.db" in result.data["restored"]
    assert config_state(host) == before
    assert host.read_text(ACCESS).endswith(f"TLS_Srv:{RELAY}\tENCR:112\n")


def test_remove_takes_out_our_tls_entry_ca_and_masquerade_only() -> None:
    host = rhel_sendmail_host()
    host.add_file(ACCESS, "Connect:127\tRELAY\nTLS_Srv:partner.example\tENCR:128\n")
    host.add_file(CA_FILE, "-----BEGIN CERTIFICATE-----\n")
    mc_before = host.read_text(MC)
    ops = ops_for(host)
    done = ops.set_smarthost(request(auth=AUTH, tls={"mode": "verify", "ca_file": CA_FILE},
                                     masquerade={"domain": "ourtest.com"}))
    assert done.ok, done.error
    assert done.data["smarthost"]["tls"] == {"mode": "verify", "ca_file": CA_FILE}
    assert cf_has(host, "DMourtest.com", f"O CACertFile={CA_FILE}", "O SetCertAltnames=true")
    removed = secret_free(ops.remove_smarthost())
    assert removed.ok and removed.changed, removed.error
    assert host.read_text(ACCESS) == "Connect:127\tRELAY\nTLS_Srv:partner.example\tENCR:128\n"
    assert f"-TLS_Srv:{RELAY}\tVERIFY:112+CN\n" in removed.data["diff"]
    # the mc as a plain smarthost change and its removal leave it (the template line went)
    assert host.read_text(MC) == remove_smarthost_mc(set_smarthost_mc(mc_before, request()))
    assert authmap.username_for(host.read_text(AUTHINFO), RELAY) is None
    assert not cf_has(host, "DMourtest.com") and not cf_has(host, f"O CACertFile={CA_FILE}")


def test_a_new_relay_leaves_no_credentials_or_tls_entry_of_the_former_one() -> None:
    host = debian_sendmail_host()
    ops = ops_for(host)
    assert ops.set_smarthost(request(auth=AUTH)).ok
    moved = ops.set_smarthost(parse_smarthost_request({"host": "relay2.lab.test",
                                                       "auth": AUTH}))
    assert moved.ok, moved.error
    assert authmap.username_for(host.read_text(AUTHINFO), RELAY) is None
    assert authmap.tls_mode_for(host.read_text(ACCESS), RELAY) == "may"
    assert authmap.tls_mode_for(host.read_text(ACCESS), "relay2.lab.test") == "encrypt"
    # and without auth, none for the relay either (the request is the whole setting)
    plain = ops.set_smarthost(parse_smarthost_request({"host": "relay2.lab.test"}))
    assert plain.ok and host.read_text(AUTHINFO) == ""
    assert host.read_text(ACCESS) == fixture_access(host)


@pytest.mark.parametrize("tls", [{"mode": "verify", "ca_file": "/etc/mail/tls/none.pem"},
                                 {"mode": "encrypt", "ca_file": "/etc/mail/tls/none.pem"}])
def test_a_ca_file_not_on_the_host_is_refused_before_anything_changes(
        tls: dict[str, str]) -> None:
    host = debian_sendmail_host()
    before = config_state(host)
    result = secret_free(ops_for(host).set_smarthost(request(auth=AUTH, tls=tls)))
    assert result.ok is False and result.error_kind == "config"
    assert result.error is not None and result.error.startswith(
        "tls.ca_file: /etc/mail/tls/none.pem is not on the host")
    assert config_state(host) == before and not host.ran("m4") and not host.ran("makemap")


def test_verify_needs_the_hosts_bundle_or_a_ca_file_and_a_relay_name() -> None:
    host = debian_sendmail_host()
    result = ops_for(host).set_smarthost(request(tls={"mode": "verify"}))
    assert result.ok is False and result.error_kind == "config"
    assert result.error is not None and "mta.ca_bundle" in result.error
    host.add_file("/etc/ssl/certs/ca-certificates.crt", "-----BEGIN CERTIFICATE-----\n")
    done = ops_for(host).set_smarthost(request(tls={"mode": "verify"}))
    assert done.ok, done.error
    assert done.data["smarthost"]["tls"] == {"mode": "verify",
                                             "ca_file": "/etc/ssl/certs/ca-certificates.crt"}
    literal = ops_for(host).set_smarthost(parse_smarthost_request(
        {"host": "192.0.2.7", "tls": {"mode": "verify"}}))
    assert literal.ok is False and literal.error_kind == "validation"
    assert literal.error is not None and literal.error.startswith("tls.mode: verify checks")


@pytest.mark.parametrize("extra", [{"tls": {"mode": "encrypt"}}, {"auth": AUTH},
                                   {"tls": {"mode": "verify", "ca_file": CA_FILE}}])
def test_a_required_tls_level_with_mx_lookups_is_refused(extra: dict[str, Any]) -> None:
    # sendmail looks TLS_Srv up under the MX host's name, not the relay's
    host = debian_sendmail_host()
    host.add_file(CA_FILE, "-----BEGIN CERTIFICATE-----\n")
    before = config_state(host)
    result = secret_free(ops_for(host).set_smarthost(request(mx=True, **extra)))
    assert result.ok is False and result.error_kind == "validation"
    assert result.error is not None and result.error.startswith("tls.mode: ")
    assert "set mx to false" in result.error
    assert config_state(host) == before and not host.ran("m4")
    assert ops_for(host).set_smarthost(request(mx=True)).ok  # may: nothing to look up


def test_an_access_map_elsewhere_or_out_of_the_mail_dir_is_refused() -> None:
    host = rhel_sendmail_host()
    host.write_file(MC, host.read_text(MC).replace("hash -T<TMPF> -o /etc/mail/access.db",
                                                   "hash -o /etc/mail/other.db").encode())
    result = ops_for(host).set_smarthost(request(auth=AUTH))
    assert result.ok is False and "reads /etc/mail/other" in (result.error or "")
    assert ops_for(host).set_smarthost(request()).ok  # may needs no access map entry
    linked = debian_sendmail_host()
    linked.remove(ACCESS)
    linked.add_symlink(ACCESS, "/etc/shadow")
    refused = ops_for(linked).set_smarthost(request(auth=AUTH))
    assert refused.ok is False and "outside /etc/mail" in (refused.error or "")


# -- what the fake's sendmail does with it (as sendmail 8.17 did on lab hosts) ----------------


def flush(host: FakeSendmailHost) -> OperationResult:
    return ops_for(host).queue_flush(FlushRequest())


def test_encrypt_keeps_the_password_from_a_relay_without_starttls() -> None:
    host = debian_sendmail_host(messages=[])
    host.relay_tls[RELAY] = RelayTls(starttls=False)
    assert ops_for(host).set_smarthost(request(auth=AUTH)).ok
    host.queue_message(["me@ourtest.com"], sender="asterisk@lab1.lab.test")
    flushed = secret_free(flush(host))
    assert host.auth_sent == [] and host.relayed == []
    assert [d["text"] for d in flushed.data["deliveries"]] == [
        "Deferred: 454 4.7.0 encryption too weak 0 less than 112"]
    assert (f"ruleset=tls_server, arg1=NONE, relay={RELAY}, reject=454 4.7.0 encryption too "
            "weak 0 less than 112") in host.read_text(host.maillog)
    # the same relay, the entry gone: sendmail sends the password in clear
    host.write_file(f"{ACCESS}.db", host.read_file(f"{ACCESS}.db").replace(b"TLS_Srv", b"X"))
    flush(host)
    assert [(a.password, a.tls) for a in host.auth_sent] == [(PASSWORD, False)]


def test_verify_against_a_wrong_name_defers_and_encrypt_delivers() -> None:
    host = debian_sendmail_host(messages=[])
    host.add_file(CA_FILE, "-----BEGIN CERTIFICATE-----\n")
    host.relay_tls[RELAY] = RelayTls(cert_name="other.lab.test")
    ops = ops_for(host)
    assert ops.set_smarthost(request(auth=AUTH, tls={"mode": "verify", "ca_file": CA_FILE})).ok
    host.queue_message(["me@ourtest.com"])
    assert [d["text"] for d in flush(host).data["deliveries"]] == [
        "Deferred: 454 4.7.0 CN other.lab.test does not match relay.lab.test"]
    log = host.read_text(host.maillog)
    assert f"relay={RELAY}., version=TLSv1.3, verify=OK, cipher=" in log
    assert host.auth_sent == []
    assert ops.set_smarthost(request(auth=AUTH, tls={"mode": "encrypt", "ca_file": CA_FILE},
                                     masquerade={"domain": "ourtest.com"})).ok
    flush(host)
    assert [(m.sender, m.header_from, m.auth_user, m.tls) for m in host.relayed] == [
        ("root@ourtest.com", "root@ourtest.com", USER, True)]
    assert [(a.password, a.tls) for a in host.auth_sent] == [(PASSWORD, True)]


def test_the_base64_password_is_hidden_like_the_password() -> None:
    host = debian_sendmail_host()
    line = authmap.set_entry("", RELAY, USER, PASSWORD).strip()
    host.script(["makemap"], exit_code=1, stderr=f"makemap: line 1: {line}: bad entry\n",
                times=1)
    result = secret_free(ops_for(host).set_smarthost(request(auth=AUTH)))
    assert result.ok is False and "bad entry" in (result.error or "")
    assert '"P=[redacted]"' in (result.error or "")
