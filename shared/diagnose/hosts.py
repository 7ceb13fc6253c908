"""Host checks: the host's name, /etc/hosts, the MTA daemon, the smarthost's name.

Every fact comes through the :class:`~shared.executor.Executor`, with tools an old CentOS 6
box has: ``hostname``/``hostname -f`` (``uname -n`` as fallback), ``getent hosts``, ``cat``
(``read_file_if_exists``) and the shell's builtins (``read``, ``kill -0``). Each check is a
judge of command results (``hostname_check``, ``hosts_file_check``, ``mta_running_check``)
that ``status`` feeds from one batch of commands, and a ``check_*`` front that runs the
same commands through the executor and hands them to that judge.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from shared.diagnose.check import COMMAND_TIMEOUT_S, Check, first_line, run_soft, unbracket
from shared.errors import ExecutorError, HostUnreachable
from shared.executor import CommandResult, Executor
from shared.hostsfile import (
    OWN_LOOPBACK,
    HostsEntry,
    canonical_entry,
    entries,
    names_host,
    normal_name,
)

HOSTS_FILE = "/etc/hosts"


# -- hostname -------------------------------------------------------------------------------

#: ``(label, argv)`` of the name commands (short name, fqdn): :func:`check_hostname` runs
#: them, ``status`` batches them with its other reads; both judge with :func:`hostname_check`
HOSTNAME_COMMANDS: tuple[tuple[str, list[str]], ...] = (
    ("hostname", ["hostname"]), ("fqdn", ["hostname", "-f"]))
#: the short name when ``hostname`` gives none (an extra round trip: the check only)
FALLBACK_NAME_COMMAND = ("uname", "-n")


def check_hostname(executor: Executor) -> Check:
    """Is the host's name fully qualified (``hostname -f``; ``hostname``, ``uname -n``)?"""
    try:
        short, full = executor.run_many([argv for _, argv in HOSTNAME_COMMANDS],
                                        timeout=COMMAND_TIMEOUT_S)
    except HostUnreachable:
        raise
    except ExecutorError as exc:  # a local host without the hostname program
        failed = CommandResult(("hostname",), 127, b"", exc.message.encode(), 0.0)
        short, full = failed, failed
    if not first_line(short):
        short = run_soft(executor, FALLBACK_NAME_COMMAND, COMMAND_TIMEOUT_S)
    return hostname_check(short, full)


def short_name(executor: Executor) -> str:
    """The host's short name: the first label of ``hostname`` (``uname -n`` when that gives
    none), lowercase; "" when neither does. Only reads, without a lookup."""
    out = run_soft(executor, HOSTNAME_COMMANDS[0][1], COMMAND_TIMEOUT_S)
    if not first_line(out):
        out = run_soft(executor, FALLBACK_NAME_COMMAND, COMMAND_TIMEOUT_S)
    return _first_name(out).split(".")[0]


def _first_name(result: CommandResult) -> str:
    """The name a name command printed, normalised ("" when it failed or printed none)."""
    line = first_line(result)
    return normal_name(line.split()[0]) if line else ""


def not_qualified_reason(fqdn: str) -> str | None:
    """Why ``fqdn`` is not a usable fully qualified name, or None if it is."""
    labels = fqdn.split(".")
    if not fqdn:
        return "the host reports no name"
    if len(labels) < 2 or not all(labels):
        return f"the host calls itself {fqdn!r}, which is not fully qualified"
    if labels[0] == "localhost" or labels[-1] == "localdomain":
        return f"the host calls itself {fqdn!r}, a placeholder name other hosts cannot use"
    return None


def hostname_check(short: CommandResult, full: CommandResult) -> Check:
    """Judge the short-name command's and ``hostname -f``'s results."""
    name, fqdn = _first_name(short), _first_name(full)
    source = "hostname -f"
    if not fqdn:
        fqdn, source = name, short.argv[0] if short.argv else "hostname"
    data: dict[str, Any] = {"hostname": name.split(".")[0], "fqdn": fqdn, "source": source}
    reason = not_qualified_reason(fqdn)
    if reason is None:
        return Check("hostname_fqdn", True, f"fully qualified as {fqdn}", data)
    if not full.ok and name:
        reason += (f" ('hostname -f' failed: the name {name} does not resolve on the host;"
                   " /etc/hosts should map it)")
    return Check("hostname_fqdn", False,
                 f"{reason}: give the host a name like pbx1.example.com (hostname, and "
                 "'<address> pbx1.example.com pbx1' in /etc/hosts; when the short name is "
                 "right, fix_hostname with the domain does the /etc/hosts part)", data)


# -- /etc/hosts ----------------------------------------------------------------------------

#: what every failing /etc/hosts detail ends with
FIX_HOSTS_HINT = ("run fix_hostname (relayfleet-ops fix-hostname --domain DOMAIN, or a "
                  "fix_hostname job): it edits /etc/hosts so and tells the MTA")


def hosts_file_problems(hosts_text: str, hostname: str, fqdn: str) -> list[str]:
    """What is wrong with /etc/hosts for this host, as sentences saying what to fix.

    Right is what :mod:`shared.hostsfile` says the resolver needs: the first line naming the
    host puts the FQDN first and the short name after it, on the host's own address or on a
    loopback address of its own (Debian's ``127.0.1.1 FQDN SHORT``), not on localhost's.
    """
    by_hand, fixable = _problems(hosts_text, hostname, fqdn)
    return [*by_hand, *fixable]


def _problems(hosts_text: str, hostname: str, fqdn: str) -> tuple[list[str], list[str]]:
    """(problems for a person, problems fix_hostname fixes)."""
    hostname, fqdn = normal_name(hostname), normal_name(fqdn)
    if not_qualified_reason(fqdn) is not None:
        return [], [f"cannot check /etc/hosts without a fully qualified host name (the host "
                    f"calls itself {fqdn or hostname!r}): fix the host name first"]
    short = (hostname or fqdn).split(".")[0]
    lines = entries(hosts_text)
    return _unparsable(lines, short, fqdn), _misnamed(lines, short, fqdn)


def _unparsable(lines: list[HostsEntry], short: str, fqdn: str) -> list[str]:
    """Lines naming the host whose address does not parse (the resolver skips them, and so
    does fix_hostname: what they meant is for a person to say)."""
    return [f"line {line.number}: {line.address!r} is not an IP address: fix or remove the "
            "line" for line in lines if line.ip is None and line.names_any(short, fqdn)]


def _misnamed(lines: list[HostsEntry], short: str, fqdn: str) -> list[str]:
    """What makes the host's name resolve to something other than ``fqdn`` (what
    fix_hostname fixes)."""
    example = (f"'192.0.2.10 {fqdn} {short}' (with this host's own address) or Debian's "
               f"'{OWN_LOOPBACK} {fqdn} {short}'")
    first = canonical_entry(lines, short, fqdn)
    if first is None:
        return [f"/etc/hosts has no line for {fqdn}: add {example}"]
    if names_host(first, short, fqdn):
        return []
    problems: list[str] = []
    with_fqdn = [ln for ln in lines if ln.ip is not None and fqdn in ln.names]
    good = next((ln for ln in lines if names_host(ln, short, fqdn)), None)
    if good is not None:
        before = f" before the line for {good.address}"
        problems.append(f"{_first_says(first, short, fqdn, before)}: move the {good.address} "
                        "line above it"
                        + (f", or take {_named(first, short, fqdn)} off line {first.number}"
                           if first.for_localhost else ""))
        return problems
    if with_fqdn and all(ln.for_localhost for ln in with_fqdn):
        where = ", ".join(ln.address for ln in with_fqdn)
        problems.append(f"{fqdn} is only mapped to the loopback address {where}, which is "
                        f"localhost's: map it to the host's own address instead, e.g. {example}")
        return problems
    if first.for_localhost:
        problems.append(f"{_first_says(first, short, fqdn, ' first')}: take "
                        f"{_named(first, short, fqdn)} off that line")
    if not with_fqdn:
        return [*problems, f"/etc/hosts has no line for {fqdn}: add {example}"]
    target = next(ln for ln in lines if ln.ip is not None and not ln.for_localhost
                  and ln.names_any(short, fqdn))
    if target.names[0] != fqdn:
        problems.append(f"on the line for {target.address} (line {target.number}), put {fqdn} "
                        f"first, then {short}: sendmail takes the host's canonical name from "
                        "the first name")
    if short not in target.names:
        problems.append(f"add the short name {short} to the line for {target.address} "
                        f"(line {target.number})")
    return problems


def _named(line: HostsEntry, short: str, fqdn: str) -> str:
    return " and ".join(n for n in (fqdn, short) if n in line.names)


def _first_says(first: HostsEntry, short: str, fqdn: str, where: str) -> str:
    """What the first line naming the host makes of it, when that is not right."""
    return (f"line {first.number} ({first.address}) names {_named(first, short, fqdn)}{where}:"
            " name lookups take the first matching line, so the host's canonical name is "
            f"{first.names[0]!r} (sendmail greets relays with it)")


def check_hosts_file(executor: Executor, hostname: str, fqdn: str) -> Check:
    """Does /etc/hosts map the FQDN to a real address, FQDN first, short name too?"""
    try:
        text = executor.read_file_if_exists(HOSTS_FILE)
    except HostUnreachable:
        raise
    except ExecutorError as exc:
        return Check("hosts_file", False, f"cannot read {HOSTS_FILE}: {exc.message}",
                     {"problems": [exc.message]})
    return hosts_file_check(text, hostname, fqdn)


def hosts_file_check(text: bytes | None, hostname: str, fqdn: str) -> Check:
    """Judge /etc/hosts (None when missing)."""
    by_hand: list[str] = []
    if text is None:
        fixable = [f"{HOSTS_FILE} is missing: create it with a line "
                   f"'<address> {fqdn} {hostname}'"]
    else:
        by_hand, fixable = _problems(text.decode("utf-8", "replace"), hostname, fqdn)
    problems = [*by_hand, *fixable]
    if not problems:
        return Check("hosts_file", True, f"{HOSTS_FILE} maps {fqdn} correctly",
                     {"problems": []})
    hint = f"; to fix: {FIX_HOSTS_HINT}" if fixable else ""
    return Check("hosts_file", False, "; ".join(problems) + hint, {"problems": problems})


# -- MTA daemon ------------------------------------------------------------------------------

#: exit codes of ALIVE_SCRIPT besides kill's own 0 (alive) and 1 (no such process, EPERM)
NO_PID_CODE, NO_PID_FILE_CODE, UNREADABLE_CODE = 3, 4, 5
#: the one liveness probe, for the check and for ``status``'s batch alike: reads the pid
#: file's ($1) first line, prints it only if it is a process id, and ends with ``kill -0``
#: on that pid. Nothing else of the file is ever printed: whatever file a profile names,
#: the answer is a pid or "no pid". Only shell builtins (``read``, ``kill``; no ``exec``):
#: minimal systems may lack /bin/kill. The pid is checked here as well as in Python so
#: ``kill -0`` never sees -1 or a word.
ALIVE_SCRIPT = (
    f'[ -e "$1" ] || exit {NO_PID_FILE_CODE}; l1=; '
    f'{{ IFS= read -r l1; :; }} < "$1" || exit {UNREADABLE_CODE}; set -f; set -- $l1; '
    f'[ $# -eq 1 ] || exit {NO_PID_CODE}; '
    f'case "$1" in 0*|*[!0-9]*) exit {NO_PID_CODE} ;; esac; '
    f'[ ${{#1}} -le 10 ] || exit {NO_PID_CODE}; printf "%s\\n" "$1"; kill -0 "$1"')
_PID = re.compile(r"[1-9][0-9]{0,9}")


def alive_command(pid_file: str) -> list[str]:
    """An argv that says whether the daemon in ``pid_file`` runs (see ALIVE_SCRIPT)."""
    return ["sh", "-c", ALIVE_SCRIPT, "sh", pid_file]


def check_mta_running(executor: Executor, pid_file: str) -> Check:
    """Is the MTA's daemon alive (first line of the pid file, then ``kill -0``)?"""
    return mta_running_check(run_soft(executor, alive_command(pid_file), COMMAND_TIMEOUT_S),
                             pid_file)


def mta_running_check(result: CommandResult, pid_file: str) -> Check:
    """Judge the result of :func:`alive_command`."""
    data: dict[str, Any] = {"pid": None, "pid_file": pid_file}
    why = result.stderr.decode("utf-8", "replace").strip()[:200]
    if result.exit_code == NO_PID_FILE_CODE:
        return Check("mta_running", False, f"there is no pid file {pid_file}: the MTA is not "
                     "running (start it: service sendmail start), or the profile's pid_file "
                     "is wrong", data)
    if result.exit_code == UNREADABLE_CODE:  # the shell's reason, never the file's content
        return Check("mta_running", False, f"cannot read {pid_file}: {why}", data)
    if result.exit_code == NO_PID_CODE:
        return Check("mta_running", False, f"{pid_file} holds no process id: restart the MTA",
                     data)
    first = result.stdout_text().split("\n")[0].strip()
    if not _PID.fullmatch(first):  # the script did not get as far as the pid
        return Check("mta_running", False,
                     f"cannot check {pid_file} (exit {result.exit_code}): {why}", data)
    pid = data["pid"] = int(first)
    if result.ok:
        return Check("mta_running", True, f"running as pid {pid}", data)
    if "not permitted" in why.lower():
        # EPERM: the process exists but belongs to another user.
        return Check("mta_running", True, f"running as pid {pid} (owned by another user)", data)
    return Check("mta_running", False, f"pid {pid} from {pid_file} is not running (a stale pid "
                 "file): start the MTA (service sendmail start)", data)


# -- smarthost name ------------------------------------------------------------------------

_NAME_CHARS = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_.])?")


def _address_literal(name: str) -> str | None:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return None


def check_resolves(executor: Executor, host: str) -> Check:
    """Does the host resolve the smarthost's name (``getent hosts``)? Address literals pass."""
    name, _ = unbracket(host)
    literal = _address_literal(name)
    if literal is not None:
        return Check("smarthost_resolves", True, f"{host} is an address literal",
                     {"host": host, "addresses": [literal]})
    if not _NAME_CHARS.fullmatch(name):
        return Check("smarthost_resolves", False, f"{host!r} is not a host name: set the "
                     "smarthost again", {"host": host, "addresses": []})
    out = run_soft(executor, ["getent", "hosts", name], COMMAND_TIMEOUT_S)
    addresses: list[str] = []
    for line in out.stdout_text().splitlines() if out.ok else []:
        parts = line.split()
        if parts and _address_literal(parts[0]) and parts[0] not in addresses:
            addresses.append(parts[0])
    data = {"host": name, "addresses": addresses}
    if out.exit_code == 127:
        return Check("smarthost_resolves", False, f"cannot look up {name}: "
                     f"{out.output_text().strip()[:200]}", data)
    if not addresses:
        return Check("smarthost_resolves", False, f"{name} does not resolve on this host: check "
                     "the name and the host's DNS (/etc/resolv.conf)", data)
    return Check("smarthost_resolves", True, f"{name} resolves to {', '.join(addresses)}", data)
