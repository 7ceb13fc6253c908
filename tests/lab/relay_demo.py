"""The relay-grade story through a running controller's REST API: what Google-style relays
ask of a PBX, and how relayfleet gets voicemail through them.

``python -m tests.lab.relay_demo --api URL --token TOKEN`` (root): two lab hosts (sendmail
through its agent, Postfix over SSH) that trust the lab CA and whose names are not fully
qualified, three relays (:mod:`tests.lab.relay`), and four scenes:

1. a relay that offers AUTH without STARTTLS never receives the password;
2. ``tls.mode: verify`` keeps mail from a relay whose certificate names another host
   (diagnose and the parsed log say why); ``encrypt`` delivers;
3. the Google-style relay refuses the hosts' EHLO names; diagnose names the cause;
4. ``fix_hostname`` (dry run, then real) and a flush: delivered over TLS, with AUTH, from
   the customer's domain.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from tests.lab.demo import say, table
from tests.lab.enrol import SshLogin, host_body
from tests.lab.fleet_demo import Api, run_demo, ssh_login
from tests.lab.lab import Lab
from tests.lab.relay_story import (
    CUSTOMER_DOMAIN,
    HOST_DOMAIN,
    PASSWORD,
    checks_by_host,
    header,
    log_problems,
    queue_voicemail,
    smarthost_params,
    start_relays,
    unqualify,
    wait_delivered,
)


def _job(api: Api, action: str, ids: list[int], params: dict[str, Any] | None = None,
         **options: Any) -> dict[str, Any]:
    return api.run_job({"action": action, "target": {"hosts": ids}, "params": params or {},
                        "options": options})


def story(lab: Lab, api: Api) -> int:
    """Run the four scenes; return a process exit code."""
    login: SshLogin = ssh_login()
    relays = start_relays(lab)
    sendmail = lab.add_host("pbx-oslo", "debian", mta="sendmail", trust_lab_ca=True)
    postfix = lab.add_host("freepbx-bern", "debian", mta="postfix", trust_lab_ca=True)
    hosts = [sendmail, postfix]
    for host in hosts:
        unqualify(host)
    tenant = api.call("POST", "/v1/tenants", {"name": f"Relay demo {secrets.token_hex(2)}"})
    site = api.call("POST", "/v1/sites", {"tenant_id": tenant["id"], "name": "Alps"})
    ids = [api.call("POST", "/v1/hosts", {**host_body(host, transport, login=login),
                                          "site_id": site["id"]})["id"]
           for host, transport in ((sendmail, "agent"), (postfix, "ssh"))]
    say("enrolled pbx-oslo (sendmail, agent) and freepbx-bern (Postfix, SSH); neither has a "
        "fully qualified name\n")

    say(f"1. a relay offering AUTH without STARTTLS ({relays.cleartext.fqdn}); auth given, "
        "so tls.mode is encrypt:")
    _job(api, "set_smarthost", ids, smarthost_params(relays.cleartext))
    subjects = queue_voicemail(hosts)
    _job(api, "flush_queue", ids)
    relays.cleartext.wait_sessions(len(hosts))
    say(f"   relay received {len(relays.cleartext.messages())} messages; the password crossed "
        f"the wire: {relays.cleartext.received_secret(PASSWORD)}")
    problems = log_problems(_job(api, "read_log", ids, {"lines": 200}))
    table([[name, ", ".join(sorted(found))] for name, found in problems.items()],
          ["host", "maillog problems"])

    say(f"\n2. tls.mode verify against {relays.wrong_name.fqdn}, whose certificate names "
        "another host:")
    _job(api, "set_smarthost", ids, smarthost_params(relays.wrong_name, tls={"mode": "verify"}))
    _job(api, "flush_queue", ids)
    checks = checks_by_host(_job(api, "diagnose", ids))
    table([[name, str(c["smarthost_tls"]["ok"]), c["smarthost_tls"]["detail"][:90]]
           for name, c in checks.items()], ["host", "smarthost_tls", "detail"])
    say("   the same relay with tls.mode encrypt (no certificate check):")
    _job(api, "set_smarthost", ids, smarthost_params(relays.wrong_name, tls={"mode": "encrypt"}))
    _job(api, "flush_queue", ids)
    delivered = wait_delivered(relays.wrong_name, subjects.values())
    say(f"   delivered {len(delivered)} of {len(hosts)}")

    say(f"\n3. the Google-style relay {relays.google.fqdn}: verify, AUTH, customer senders "
        f"only (masquerade as {CUSTOMER_DOMAIN}), refuses unqualified EHLO names:")
    _job(api, "set_smarthost", ids, smarthost_params(
        relays.google, tls={"mode": "verify"}, masquerade={"domain": CUSTOMER_DOMAIN}))
    subjects = queue_voicemail(hosts)
    _job(api, "flush_queue", ids)
    checks = checks_by_host(_job(api, "diagnose", ids))
    table([[name, c["smarthost_smtp"]["detail"][:110]] for name, c in checks.items()],
          ["host", "smarthost_smtp"])

    say(f"\n4. fix_hostname {{domain: {HOST_DOMAIN}}}, dry run first:")
    dry = _job(api, "fix_hostname", ids, {"domain": HOST_DOMAIN}, dry_run=True)
    for result in dry["results"]:
        say(f"   {result['host']}:")
        for line in (result["data"] or {}).get("diff", "").splitlines():
            say(f"     {line}")
    _job(api, "fix_hostname", ids, {"domain": HOST_DOMAIN})
    _job(api, "flush_queue", ids)
    delivered = wait_delivered(relays.google, subjects.values())
    table([[m["peer"], str(m["tls"]), str(m["auth_user"]), m["mail_from"], header(m, "From")]
           for m in delivered], ["from", "tls", "auth user", "envelope sender", "From:"])
    ok = len(delivered) == len(hosts) and not relays.cleartext.received_secret(PASSWORD)
    say("\ndone: every voicemail delivered through the relay-grade smarthost" if ok
        else "\ndone, with problems (see above): " + json.dumps(subjects))
    return 0 if ok else 1


def main() -> None:
    """Entry point."""
    run_demo(__doc__, story)


if __name__ == "__main__":
    main()
