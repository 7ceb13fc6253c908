"""The agent's systemd unit leaves the operations every path they write, and only those:
real sendmail and Postfix lab hosts run fix_hostname and a smarthost change inside the
unit's file system view.

Lab hosts have no systemd, so the view is made as systemd makes it, in a private mount
namespace inside the host: every mount read-only but /proc, /sys and /dev
(ProtectSystem=strict), empty private /tmp and /var/tmp (PrivateTmp=yes), then the unit's
own ReadWritePaths bound writable, ReadOnlyPaths read-only and InaccessiblePaths covered. A
lab host's /etc/hosts is a bind mount, as a ReadWritePaths file is: a rename cannot replace
it, and /etc around it is read-only here, so no temp file can go beside it. The MTA a
change restarts runs in that view too (under systemd it runs in its own unit): stricter.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.integration.test_lab_fix_hostname import resolved_name, unqualify
from tests.integration.test_lab_smarthost import SMARTHOST
from tests.lab.lab import DOMAIN, LabHost
from tests.unit.test_agent_unit import unit_paths

pytestmark = [pytest.mark.lab, pytest.mark.slow]

#: makes the unit's file system view, then runs the rest of its argv ("$@") in it; each path
#: list ends with "--"; a path the host lacks is skipped (the unit's "-" prefix)
SANDBOX = r"""
set -eu
awk '{print $5}' /proc/self/mountinfo | sort -u | while read -r mp; do
    case "$mp" in
        /proc|/proc/*|/sys|/sys/*|/dev|/dev/*) ;;
        *) # a mount hidden under a later one is not in this view: only what is
           if mountpoint -q "$mp"; then mount -o remount,bind,ro "$mp"; fi ;;
    esac
done
for tmp in /tmp /var/tmp; do
    if [ -d "$tmp" ]; then mount -t tmpfs -o mode=1777 private-tmp "$tmp"; fi
done
blank=$(mktemp)
chmod 000 "$blank"
while [ "$1" != -- ]; do
    if [ -e "$1" ]; then mount --rbind "$1" "$1"; mount -o remount,bind,rw "$1"; fi
    shift
done
shift
while [ "$1" != -- ]; do
    if [ -e "$1" ]; then mount --rbind "$1" "$1"; mount -o remount,bind,ro "$1"; fi
    shift
done
shift
while [ "$1" != -- ]; do
    if [ -d "$1" ]; then mount -t tmpfs -o ro,mode=000 inaccessible "$1"
    elif [ -e "$1" ]; then mount --bind "$blank" "$1"; fi
    shift
done
shift
exec "$@"
"""


def sandbox() -> list[str]:
    """The argv prefix that runs a command in the agent unit's file system view."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", SANDBOX, "sandbox",
            *sorted(unit_paths("ReadWritePaths")), "--", *sorted(unit_paths("ReadOnlyPaths")),
            "--", *sorted(unit_paths("InaccessiblePaths")), "--"]


def test_the_sandbox_is_what_the_unit_says(make_host: Callable[..., LabHost]) -> None:
    """The emulation holds: /etc is read-only in it, /etc/hosts and the MTA's directory
    writable, /etc/relayfleet read-only, /etc/shadow unreadable (to root too: uid 0 with
    all capabilities reads a mode 000 file, so the cover's emptiness is checked)."""
    host = make_host("debian")
    probe = ("for p in /etc/.probe /etc/mail/.probe /etc/relayfleet/.probe; do "
             "if touch $p 2>/dev/null; then rm -f $p; echo $p writable; "
             "else echo $p read-only; fi; done; "
             "if : >> /etc/hosts; then echo hosts writable; fi; "
             "wc -c < /etc/shadow")
    out = host.run([*sandbox(), "sh", "-c", probe]).stdout.decode().split("\n")
    assert out[:5] == ["/etc/.probe read-only", "/etc/mail/.probe writable",
                       "/etc/relayfleet/.probe read-only", "hosts writable", "0"], out


@pytest.mark.parametrize(("layout", "mta"), [("debian", "sendmail"), ("centos", "postfix")])
def test_fix_hostname_and_a_smarthost_change_run_in_the_agent_sandbox(
        make_host: Callable[..., LabHost], layout: str, mta: str) -> None:
    host = make_host(layout, mta=mta)
    unqualify(host)
    fqdn = f"{host.name}.{DOMAIN}"
    hosts_inode = host.run(["stat", "-c", "%i", "/etc/hosts"]).stdout
    code, done = host.ops("fix-hostname", "--domain", DOMAIN, wrap=sandbox())
    assert code == 0 and done["ok"] and done["changed"], done
    steps = {step["name"]: step for step in done["steps"]}
    assert "/etc/hosts is never renamed over" in steps["swap"]["output"], steps["swap"]
    assert resolved_name(host) == fqdn
    assert host.run(["stat", "-c", "%i", "/etc/hosts"]).stdout == hosts_inode

    code, changed = host.ops("set-smarthost", body=SMARTHOST,
                             wrap=sandbox())
    assert code == 0 and changed["ok"] and changed["changed"], (changed["error"], changed["steps"])
    # sendmail -q (run by the agent, so in its sandbox) writes the queues; postqueue -f
    host.send_mail([f"voicemail@{DOMAIN}"], subject="through the sandbox", queue_only=True)
    code, flushed = host.ops("flush", wrap=sandbox())
    assert code == 0 and flushed["ok"], flushed
    code, removed = host.ops("remove-smarthost", wrap=sandbox())
    assert code == 0 and removed["ok"] and removed["changed"], removed
