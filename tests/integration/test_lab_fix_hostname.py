"""fix_hostname on real sendmail and Postfix lab hosts whose name is not fully qualified,
through the local executor inside the host and over SSH to a host without Python.

A lab host's /etc/hosts is a bind-mounted file (a rename cannot replace it), and a sendmail
host shares the machine's real /etc otherwise: the action must write /etc/hosts in place
and touch nothing else of /etc. The lab's DNS knows every host, so each host here first
loses the search domain from its resolv.conf: like the seed's PBX, only /etc/hosts can
qualify its name.

sendmail itself sleeps 60 s in every start and every ``sendmail -bv`` while no name it can
find is dotted ("My unqualified host name (localhost) unknown; sleeping for retry"). The
sendmail host restarted here names itself on localhost's line after
``localhost.localdomain``, as the seed's CentOS box does: its daemon then runs as
localhost.localdomain at once. The other keeps the daemon it had, which fix_hostname
restarts all the same. (The controller's fix_hostname job over sendmail and Postfix hosts,
through agents and over SSH, is the relay-grade acceptance test's.)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.profile import build_profile
from tests.conftest import OpsRunner, ssh_target_for
from tests.lab.lab import DOMAIN, LabHost

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def unqualify(host: LabHost, *, restart: bool = True) -> None:
    """Leave the host's name to /etc/hosts, name it there only after localhost (so that it
    is called localhost), and restart its MTA so that it takes that name. A sendmail
    restarted so is given ``localhost.localdomain`` too (see above)."""
    resolv = host.fs("/etc/resolv.conf")
    resolv.write_text("".join(line for line in resolv.read_text().splitlines(keepends=True)
                              if not line.startswith("search")))
    localhost = "localhost localhost.localdomain" if restart and host.mta == "sendmail" else (
        "localhost")
    host.fs("/etc/hosts").write_text(f"127.0.0.1\t{localhost} {host.name}\n"
                                     "::1\tlocalhost ip6-localhost ip6-loopback\n")
    if restart:
        host.stop_mta()
        host.start_mta()


def resolved_name(host: LabHost) -> str:
    """What ``hostname -f`` says inside the host."""
    return host.run(["hostname", "-f"]).stdout.decode().strip()


def mta_name(host: LabHost) -> str:
    """The name the MTA greets relays with: sendmail's $j, Postfix's myhostname."""
    if host.mta == "postfix":
        return host.postconf("-h", "myhostname").strip()
    out = host.run(["sendmail", "-d0.1", "-bv", "root"], timeout=90).stdout.decode()
    match = re.search(r"\(canonical domain name\) \$j = (\S+)", out)
    assert match, out
    return match.group(1)


def mta_pid(host: LabHost) -> str:
    pid_file = build_profile(host.mta, host.flavour, {}).daemon_pid_file
    # read inside the host: /var/run is a link to /run, which is the host's own
    return host.run(["cat", pid_file]).stdout.decode().split()[0]


def watched(host: LabHost) -> dict[str, bytes | None]:
    """The files the action may change, and the machine's own /etc/hosts and /etc/hostname
    (a sendmail lab host shares the machine's /etc: they must stay as they are)."""
    files = {"hosts": host.fs("/etc/hosts").read_bytes(),
             "machine hosts": Path("/etc/hosts").read_bytes(),
             "machine hostname": (Path("/etc/hostname").read_bytes()
                                  if Path("/etc/hostname").exists() else None)}
    if host.mta == "postfix":
        files["main.cf"] = (host.config_dir / "main.cf").read_bytes()
    return files


@pytest.fixture(params=[("sendmail", "debian", "local"), ("sendmail", "centos", "ssh"),
                        ("postfix", "centos", "local"), ("postfix", "debian", "ssh")],
                ids=lambda p: "-".join(p))
def unqualified(request: pytest.FixtureRequest, make_host: Callable[..., LabHost],
                client_keys: dict[str, tuple[str, str]]) -> tuple[LabHost, OpsRunner]:
    """A host called ``localhost`` by its resolver, and how to run operations on it."""
    mta, layout, transport = request.param
    host = make_host(layout, mta=mta)
    unqualify(host, restart=mta == "postfix" or layout == "debian")
    if transport == "local":
        return host, OpsRunner(host, None)
    target = ssh_target_for(host, client_keys)
    host.disable_python()
    return host, OpsRunner(host, target)


def test_fix_hostname_qualifies_the_name_and_the_mta_takes_it(
        unqualified: tuple[LabHost, OpsRunner]) -> None:
    host, ops = unqualified
    fqdn = f"{host.name}.{DOMAIN}"
    # localhost's line before the change and after it: the host's name taken off it
    localhost_line = host.fs("/etc/hosts").read_text().splitlines()[0]
    localhost_after = localhost_line.removesuffix(f" {host.name}")
    assert resolved_name(host) == "localhost"
    if host.mta == "postfix":
        # Debian's main.cf names the host itself; RHEL's leaves it to Postfix's default
        before_name = mta_name(host)
        assert before_name == (fqdn if host.layout == "debian"
                               else f"{host.name}.localdomain")
        code, status = ops("status")
        assert code == 0 and status["data"]["hosts_file"]["ok"] is False, status
    elif "localdomain" in localhost_line:
        # sendmail takes the first dotted name it finds, as its daemon did at the restart
        before_name = mta_name(host)
        assert before_name == "localhost.localdomain"
    else:
        # asking sendmail would take 60 s: it cannot qualify localhost
        before_name = "localhost"

    before, pid = watched(host), mta_pid(host)
    code, dry = ops("fix-hostname", "--domain", DOMAIN, "--dry-run")
    assert code == 0 and dry["changed"] is True and dry["data"]["dry_run"] is True, dry
    diff = dry["data"]["diff"]
    assert (f"-{localhost_line}\n+{localhost_after}\n"
            f"+127.0.1.1\t{fqdn} {host.name}\n") in diff, diff
    main_cf_changes = host.mta == "postfix" and before_name != fqdn
    assert ("+++ /etc/postfix/main.cf (new)" in diff) is main_cf_changes, diff
    if main_cf_changes:
        assert f"+myhostname = {fqdn}\n" in diff, diff
    assert watched(host) == before and mta_pid(host) == pid
    assert resolved_name(host) == "localhost"

    code, done = ops("fix-hostname", "--domain", DOMAIN)
    assert code == 0 and done["ok"] and done["changed"] and not done["rolled_back"], done
    assert done["data"]["diff"] == diff and done["data"]["mta_running"] is True
    steps = {step["name"]: step for step in done["steps"]}
    # /etc/hosts (bind-mounted here) is written in place, never renamed over
    assert "/etc/hosts is never renamed over: its content was replaced in place" in (
        steps["swap"]["output"]), steps["swap"]
    assert host.fs("/etc/hosts").read_text() == (
        f"{localhost_after}\n127.0.1.1\t{fqdn} {host.name}\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n")
    assert resolved_name(host) == fqdn and mta_name(host) == fqdn
    assert mta_pid(host) != pid or host.mta == "postfix"  # Postfix reloads in place
    assert "unqualified" not in host.read_maillog().rsplit("starting daemon", 1)[-1]
    after = watched(host)
    assert {k: v for k, v in after.items() if k not in ("hosts", "main.cf")} == {
        k: v for k, v in before.items() if k not in ("hosts", "main.cf")}
    assert host.run(["hostname"]).stdout.decode().strip() == host.name
    code, status = ops("status")
    assert status["data"]["hosts_file"] == {"ok": True, "problems": []}, status
    assert status["data"]["fqdn"] == fqdn

    code, again = ops("fix-hostname", "--fqdn", fqdn)
    assert code == 0 and again["ok"] and again["changed"] is False, again
    assert again["data"]["diff"] == "" and watched(host) == after
    assert [s["output"] for s in again["steps"] if s["name"] == "compare"] == [
        f"already fully qualified: the host resolves {host.name} to {fqdn} and "
        f"{'Postfix' if host.mta == 'postfix' else 'sendmail'} has that name; "
        "no file touched"]

    code, renamed = ops("fix-hostname", "--fqdn", f"pbx9.{DOMAIN}")
    assert code == 2 and renamed["error_kind"] == "validation", renamed
    assert "renaming a host is a different job" in renamed["error"]
    assert watched(host) == after


def test_a_failed_reload_puts_both_files_back(make_host: Callable[..., LabHost]) -> None:
    """The rollback restores the bind-mounted /etc/hosts in place and main.cf, byte for
    byte, and Postfix runs the old name again."""
    host = make_host("centos", mta="postfix")
    unqualify(host)
    before = watched(host)
    # a reload that fails once: the first reload is the change's, the next the rollback's
    flag = host.root / "fail-once"
    flag.write_text("")
    script = host.root / "reload-once-broken"
    script.write_text(f"#!/bin/sh\nif [ -e {flag} ]; then rm -f {flag}; echo broken >&2; "
                      "exit 1; fi\nexec postfix reload\n")
    script.chmod(0o755)
    code, doc = host.ops("fix-hostname", "--domain", DOMAIN, profile={"reload": [str(script)]})
    assert code == 1 and doc["rolled_back"] is True, doc
    assert sorted(doc["data"]["restored"]) == ["/etc/hosts", "/etc/postfix/main.cf"], doc
    assert doc["data"]["mta_running"] is True and not flag.exists()
    assert watched(host) == before
    assert resolved_name(host) == "localhost"
    assert mta_name(host) == f"{host.name}.localdomain"
