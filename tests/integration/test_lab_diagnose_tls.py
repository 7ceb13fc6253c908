"""diagnose negotiates STARTTLS from real lab hosts (Debian's sendmail and Postfix, through
the local executor inside the host and over SSH to a host without Python): the lab's
relay-grade smarthosts (aiosmtpd, lab-CA certificates, AUTH after STARTTLS) verified against
a CA file in the host's own configuration directory or the host's default bundle, a
certificate naming another host, a relay refusing unqualified EHLO names. (That the MTAs
themselves keep mail from the relay with the wrong name, and their maillogs say why, is the
relay-grade acceptance test's.)"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import OpsRunner, ssh_target_for
from tests.lab.lab import Lab, LabHost
from tests.lab.relay import RELAY_PORT, Relay

pytestmark = [pytest.mark.lab, pytest.mark.slow]

USER = "pbx-0042@customer.example"
PASSWORD = 'p@ss "w rd\\x'


@pytest.fixture(scope="module")
def relays(lab: Lab) -> Iterator[dict[str, Relay]]:
    """A relay with a lab-CA certificate naming it that refuses unqualified EHLO names like
    Google's, and one whose certificate names another host."""
    started = {"good": lab.start_relay("diaggood", credentials=(USER, PASSWORD),
                                       refuse_unqualified_ehlo=True),
               "wrong": lab.start_relay("diagwrong", "wrongname", credentials=(USER, PASSWORD))}
    yield started
    for relay in started.values():
        lab.stop_relay(relay)


@pytest.fixture(params=[("sendmail", "local"), ("sendmail", "ssh"), ("postfix", "local"),
                        ("postfix", "ssh")], ids=lambda p: "-".join(p))
def subject(request: pytest.FixtureRequest, make_host: Callable[..., LabHost],
            client_keys: dict[str, tuple[str, str]]) -> tuple[LabHost, OpsRunner]:
    mta, transport = request.param
    host = make_host("debian", mta=mta)
    if transport == "local":
        return host, OpsRunner(host, None)
    target = ssh_target_for(host, client_keys)
    host.disable_python()
    return host, OpsRunner(host, target)


def install_lab_ca(host: LabHost, lab: Lab) -> str:
    """The lab CA as a file in the host's own configuration directory (/etc/mail is bound
    per sendmail host, /etc/postfix is in a Postfix host's own /etc); its path inside."""
    (host.config_dir / "lab-ca.pem").write_bytes(lab.ca.cert.read_bytes())
    return f"/etc/{'mail' if host.mta == 'sendmail' else 'postfix'}/lab-ca.pem"


def point_at(ops: OpsRunner, relay: Relay, tls: dict[str, Any]) -> None:
    code, result = ops("set-smarthost", body={
        "host": relay.fqdn, "port": RELAY_PORT, "auth": {"username": USER, "password": PASSWORD},
        "tls": tls})
    assert code == 0 and result["ok"], result
    assert result["data"]["smarthost"]["tls"]["mode"] == tls["mode"], result["data"]


def diagnose(ops: OpsRunner) -> dict[str, dict[str, Any]]:
    _code, result = ops("diagnose")
    return {c["name"]: c for c in result["data"]["checks"]}


def probed_from(relay: Relay, host: LabHost, count: int) -> dict[str, Any]:
    """The relay's record of the host's latest connection (``count`` connections so far)."""
    mine = [s for s in relay.wait_sessions(count) if s["peer"] == host.address]
    assert mine, relay.sessions()
    return mine[-1]


def test_diagnose_verifies_the_relay_from_the_host_and_names_a_refused_ehlo(
        subject: tuple[LabHost, OpsRunner], relays: dict[str, Relay], lab: Lab) -> None:
    host, ops = subject
    good, wrong = relays["good"], relays["wrong"]
    ca_file = install_lab_ca(host, lab)

    point_at(ops, good, {"mode": "verify", "ca_file": ca_file})
    seen = len(good.sessions())
    checks = diagnose(ops)
    smtp, tls = checks["smarthost_smtp"], checks["smarthost_tls"]
    assert smtp["ok"] is True and smtp["data"]["ehlo_name"] == host.fqdn, smtp
    assert smtp["data"]["auth"] == [] and smtp["data"]["starttls"] is True
    assert tls["ok"] is True, tls
    data = tls["data"]
    assert (data["mode"], data["verified"], data["ca_bundle"], data["ca_source"]) == (
        "verify", True, ca_file, "tls.ca_file"), data
    assert data["names"] == [good.fqdn] and data["name_matches"] is True
    assert data["issuer"] == "relayfleet lab CA" and 0 < data["days_left"] <= 30
    assert data["version"] == "TLSv1.3" and data["cipher"]
    assert sorted(data["auth_after_tls"]) == ["LOGIN", "PLAIN"]
    # The relay saw this host greet with its MTA's name, STARTTLS, EHLO over TLS; no AUTH.
    session = probed_from(good, host, seen + 1)
    assert session["commands"] == ["EHLO", "STARTTLS", "EHLO", "QUIT"], session
    assert session["ehlo"] == [host.fqdn, host.fqdn] and session["tls"] == "TLSv1.3"
    assert session["auth_user"] is None

    # The certificate of the other relay chains to the lab CA but names another host.
    point_at(ops, wrong, {"mode": "verify", "ca_file": ca_file})
    tls = diagnose(ops)["smarthost_tls"]
    assert tls["ok"] is False, tls
    assert tls["data"]["verified"] is True and tls["data"]["name_matches"] is False
    assert tls["data"]["names"] == ["other.lab.test"]
    assert f"certificate names other.lab.test, not {wrong.fqdn}" in tls["detail"]
    assert "certificate verification failed (wrong name)" in tls["detail"]

    # encrypt with the host's default bundle, which does not know the lab CA ...
    point_at(ops, good, {"mode": "encrypt"})
    tls = diagnose(ops)["smarthost_tls"]
    assert tls["ok"] is True, tls
    assert (tls["data"]["verified"], tls["data"]["ca_source"]) == (False, "mta.ca_bundle")
    assert tls["data"]["verify_error"] == "unable to get local issuer certificate"
    assert ("certificate verification failed: unable to get local issuer certificate"
            in tls["detail"])
    # ... until the host trusts it
    bundle = host.trust_lab_ca()
    checks = diagnose(ops)
    tls = checks["smarthost_tls"]
    assert tls["ok"] is True and tls["data"]["verified"] is True, tls
    assert tls["data"]["ca_bundle"] == bundle
    assert checks["smarthost_smtp"]["ok"] is True, checks["smarthost_smtp"]

    # The MTA greets as "localhost" (the name a host without an FQDN gets): the relay, like
    # Google's, refuses it.
    if host.mta == "postfix":
        host.run(["postconf", "-e", "smtp_helo_name=localhost"])
    else:
        cf = host.config_dir / "sendmail.cf"
        cf.write_text(cf.read_text() + "O HeloName=localhost\n")
    refused = len(good.refusals())
    checks = diagnose(ops)
    smtp = checks["smarthost_smtp"]
    assert smtp["ok"] is False and smtp["data"]["error"] == "ehlo_refused", smtp
    assert smtp["data"]["ehlo_name"] == "localhost"
    assert f"{good.fqdn}:{RELAY_PORT} refuses this host's EHLO name localhost: 421 4.7.0" in (
        smtp["detail"])
    assert "run fix_hostname" in smtp["detail"]
    assert checks["smarthost_tls"]["ok"] is None
    assert [r["reason"] for r in good.refusals()[refused:]] == ["unqualified-ehlo"]
