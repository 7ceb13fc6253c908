"""The seed story's checklist as machine checks, run through an executor.

Every fact about the host comes through the :class:`~shared.executor.Executor`, with
tools an old CentOS 6 box has: ``hostname``/``hostname -f`` (``uname -n`` as fallback),
``getent hosts``, ``cat`` (``read_file_if_exists``) and the shell's ``kill -0``. The SMTP
probe opens its TCP connection *from the host* (``Executor.open_tcp``). The SPF check
asks DNS with dnspython from wherever this code runs, using the name servers of the
host's ``/etc/resolv.conf`` (loopback ones only when the executor is local).

A :class:`Check` has ``ok`` True (fine), False (something to fix, or could not be
confirmed) or None (skipped: not applicable, e.g. SPF when no domain was given).
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.errors import ExecutorError, HostUnreachable, RelayfleetError, ValidationError
from shared.executor import ByteStream, CommandResult, Executor, LocalExecutor
from shared.profile import HostProfile
from shared.validation import validate_hostname

#: seconds a host-side command of the checks (hostname -f, getent) may take
COMMAND_TIMEOUT_S = 30.0
#: RFC 7208 section 4.6.4: DNS-querying terms per evaluation
SPF_LOOKUP_LIMIT = 10
#: RFC 7208 section 4.6.4: lookups answering NXDOMAIN or nothing
SPF_VOID_LIMIT = 2
#: RFC 7208 section 4.6.4: MX names one "mx" mechanism may look at
SPF_MX_LIMIT = 10
#: glibc uses the first three ``nameserver`` lines (MAXNS)
MAX_NAMESERVERS = 3
HOSTS_FILE = "/etc/hosts"
RESOLV_CONF = "/etc/resolv.conf"
NO_SMARTHOST = "no smarthost is configured"


@dataclass
class Check:
    """One check: ``ok`` is True, False, or None when it did not apply (skipped)."""

    name: str
    ok: bool | None
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "data": self.data}


def _run_soft(executor: Executor, argv: Sequence[str], timeout: float) -> CommandResult:
    """Run a command; a command that cannot start becomes exit 127 (unreachable hosts raise)."""
    try:
        return executor.run(argv, timeout=timeout)
    except HostUnreachable:
        raise
    except ExecutorError as exc:
        return CommandResult(tuple(argv), 127, b"", exc.message.encode(), 0.0)


def _first_line(result: CommandResult) -> str:
    """The first non-blank line of a command's stdout, stripped ("" if it failed)."""
    if not result.ok:
        return ""
    return next((ln.strip() for ln in result.stdout_text().splitlines() if ln.strip()), "")


# -- hostname -------------------------------------------------------------------------------

#: ``(label, argv)`` of the name commands, batched by :meth:`status` (short name, fqdn)
HOSTNAME_COMMANDS: tuple[tuple[str, list[str]], ...] = (
    ("hostname", ["uname", "-n"]), ("fqdn", ["hostname", "-f"]))


def check_hostname(executor: Executor) -> Check:
    """Is the host's name fully qualified (``hostname -f``; ``hostname``, ``uname -n``)?"""
    try:
        short, full = executor.run_many([["hostname"], ["hostname", "-f"]],
                                        timeout=COMMAND_TIMEOUT_S)
    except HostUnreachable:
        raise
    except ExecutorError as exc:  # a local host without the hostname program
        failed = CommandResult(("hostname",), 127, b"", exc.message.encode(), 0.0)
        short, full = failed, failed
    if not _first_line(short):
        short = _run_soft(executor, ["uname", "-n"], COMMAND_TIMEOUT_S)
    return hostname_check(short, full)


def _not_qualified_reason(fqdn: str) -> str | None:
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
    name = _first_line(short).split()[0].lower().rstrip(".") if _first_line(short) else ""
    fqdn_out = _first_line(full)
    fqdn = fqdn_out.split()[0].lower().rstrip(".") if fqdn_out else ""
    source = "hostname -f"
    if not fqdn:
        fqdn, source = name, short.argv[0] if short.argv else "hostname"
    data: dict[str, Any] = {"hostname": name.split(".")[0], "fqdn": fqdn, "source": source}
    reason = _not_qualified_reason(fqdn)
    if reason is None:
        return Check("hostname_fqdn", True, f"fully qualified as {fqdn}", data)
    if not full.ok and name:
        reason += (f" ('hostname -f' failed: the name {name} does not resolve on the host;"
                   " /etc/hosts should map it)")
    return Check("hostname_fqdn", False,
                 f"{reason}: give the host a name like pbx1.example.com (hostname, and "
                 "'<address> pbx1.example.com pbx1' in /etc/hosts)", data)


# -- /etc/hosts ----------------------------------------------------------------------------

@dataclass(frozen=True)
class _HostsLine:
    number: int
    address: str
    names: tuple[str, ...]
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None


def _parse_hosts(text: str) -> list[_HostsLine]:
    lines = []
    for number, raw in enumerate(text.splitlines(), start=1):
        fields_ = raw.split("#", 1)[0].split()
        if len(fields_) < 2:
            continue
        try:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = (
                ipaddress.ip_address(fields_[0].split("%", 1)[0]))
        except ValueError:
            ip = None
        lines.append(_HostsLine(number, fields_[0], tuple(n.lower().rstrip(".")
                                                          for n in fields_[1:]), ip))
    return lines


def hosts_file_problems(hosts_text: str, hostname: str, fqdn: str) -> list[str]:
    """What is wrong with /etc/hosts for this host, as sentences saying what to fix."""
    hostname, fqdn = hostname.lower().rstrip("."), fqdn.lower().rstrip(".")
    if _not_qualified_reason(fqdn) is not None:
        return [f"cannot check /etc/hosts without a fully qualified host name (the host calls "
                f"itself {fqdn or hostname!r}): fix the host name first"]
    short = (hostname or fqdn).split(".")[0]
    example = f"'192.0.2.10 {fqdn} {short}' (with this host's own address)"
    lines = _parse_hosts(hosts_text)
    ours = {fqdn, short}
    problems: list[str] = []
    for line in lines:
        if line.ip is None and ours & set(line.names):
            problems.append(f"line {line.number}: {line.address!r} is not an IP address: "
                            f"fix or remove the line")
    with_fqdn = [ln for ln in lines if ln.ip is not None and fqdn in ln.names]
    if not with_fqdn:
        return [*problems, f"/etc/hosts has no line for {fqdn}: add {example}"]
    public = [ln for ln in with_fqdn if ln.ip is not None and not ln.ip.is_loopback]
    if not public:
        where = ", ".join(ln.address for ln in with_fqdn)
        problems.append(f"{fqdn} is only mapped to the loopback address {where}: map it to the "
                        f"host's own address instead, e.g. {example}")
        return problems
    for line in public:
        if line.names[0] != fqdn:
            problems.append(f"on the line for {line.address} (line {line.number}), put {fqdn} "
                            f"first, then {short}: sendmail takes the host's canonical name "
                            f"from the first name")
        if short not in line.names:
            problems.append(f"add the short name {short} to the line for {line.address} "
                            f"(line {line.number})")
    first = next(ln for ln in lines if ln.ip is not None and ours & set(ln.names))
    if first not in public:
        named = " and ".join(n for n in (fqdn, short) if n in first.names)
        problems.append(f"line {first.number} ({first.address}) names {named} before the line "
                        f"for {public[0].address}: name lookups take the first matching line, "
                        f"so move the {public[0].address} line above it")
    return problems


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
    if text is None:
        problem = f"{HOSTS_FILE} is missing: create it with a line '<address> {fqdn} {hostname}'"
        return Check("hosts_file", False, problem, {"problems": [problem]})
    problems = hosts_file_problems(text.decode("utf-8", "replace"), hostname, fqdn)
    detail = "; ".join(problems) if problems else f"{HOSTS_FILE} maps {fqdn} correctly"
    return Check("hosts_file", not problems, detail, {"problems": problems})


# -- MTA daemon ------------------------------------------------------------------------------

#: prints the pid in the pid file ($1) and exits 0 if it runs; exit 3 when there is no pid.
#: ``kill`` is the shell's builtin (no ``exec``): minimal systems may lack /bin/kill.
ALIVE_SCRIPT = ('p=; read p rest < "$1"; '
                'case "$p" in ""|0*|*[!0-9]*) exit 3 ;; esac; echo "$p"; kill -0 "$p"')
#: ``kill -0 $1`` with the shell's builtin kill
KILL0_SCRIPT = 'kill -0 "$1"'


def alive_command(pid_file: str) -> list[str]:
    """An argv that says whether the daemon in ``pid_file`` runs (see ALIVE_SCRIPT)."""
    return ["sh", "-c", ALIVE_SCRIPT, "sh", pid_file]


def _judge_alive(pid: int, kill: CommandResult, pid_file: str,
                 extra: dict[str, Any] | None = None) -> Check:
    data: dict[str, Any] = {"pid": pid, "pid_file": pid_file, **(extra or {})}
    if kill.ok:
        return Check("mta_running", True, f"running as pid {pid}", data)
    if "not permitted" in kill.stderr.decode("utf-8", "replace").lower():
        # EPERM: the process exists but belongs to another user.
        return Check("mta_running", True, f"running as pid {pid} (owned by another user)", data)
    return Check("mta_running", False, f"pid {pid} from {pid_file} is not running (a stale pid "
                 "file): start the MTA (service sendmail start)", data)


def check_mta_running(executor: Executor, pid_file: str) -> Check:
    """Is the MTA's daemon alive (first line of the pid file, then ``kill -0``)?"""
    try:
        content = executor.read_file_if_exists(pid_file)
    except HostUnreachable:
        raise
    except ExecutorError as exc:
        return Check("mta_running", False, f"cannot read {pid_file}: {exc.message}",
                     {"pid": None, "pid_file": pid_file})
    if content is None:
        return Check("mta_running", False, f"there is no pid file {pid_file}: the MTA is not "
                     "running (start it: service sendmail start), or the profile's pid_file "
                     "is wrong", {"pid": None, "pid_file": pid_file})
    lines = content.decode("utf-8", "replace").splitlines()
    first = lines[0].strip() if lines else ""
    if not re.fullmatch(r"[1-9][0-9]{0,9}", first):
        return Check("mta_running", False, f"{pid_file} holds no process id ({first[:40]!r}): "
                     "restart the MTA", {"pid": None, "pid_file": pid_file})
    extra = {"command": lines[1].strip()} if len(lines) > 1 and lines[1].strip() else {}
    kill = _run_soft(executor, ["sh", "-c", KILL0_SCRIPT, "sh", first], COMMAND_TIMEOUT_S)
    return _judge_alive(int(first), kill, pid_file, extra)


def mta_running_check(result: CommandResult, pid_file: str) -> Check:
    """Judge the result of :func:`alive_command`."""
    text = _first_line(CommandResult(result.argv, 0, result.stdout, b"", 0.0))
    if not text.isdigit():
        return Check("mta_running", False, f"no process id in {pid_file}: the MTA is not "
                     "running; start it (service sendmail start)",
                     {"pid": None, "pid_file": pid_file})
    return _judge_alive(int(text), result, pid_file)


# -- smarthost name ------------------------------------------------------------------------

_NAME_CHARS = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_.])?")


def _unbracket(host: str) -> tuple[str, bool]:
    """``[name]`` / ``[IPv6:addr]`` to the bare name and whether it was bracketed."""
    name = host.strip()
    bracketed = name.startswith("[") and name.endswith("]")
    if bracketed:
        name = name[1:-1]
    if name[:5].lower() == "ipv6:":
        name = name[5:]
    return name, bracketed


def _address_literal(name: str) -> str | None:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return None


def check_resolves(executor: Executor, host: str) -> Check:
    """Does the host resolve the smarthost's name (``getent hosts``)? Address literals pass."""
    name, _ = _unbracket(host)
    literal = _address_literal(name)
    if literal is not None:
        return Check("smarthost_resolves", True, f"{host} is an address literal",
                     {"host": host, "addresses": [literal]})
    if not _NAME_CHARS.fullmatch(name):
        return Check("smarthost_resolves", False, f"{host!r} is not a host name: set the "
                     "smarthost again", {"host": host, "addresses": []})
    out = _run_soft(executor, ["getent", "hosts", name], COMMAND_TIMEOUT_S)
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


# -- SMTP probe ---------------------------------------------------------------------------

class _SmtpProtocolError(Exception):
    """The peer does not speak SMTP as expected."""


class _SmtpReader:
    """Reads SMTP replies; each reply as a whole must arrive within the time box."""

    MAX_LINE = 4096
    MAX_LINES = 200

    def __init__(self, stream: ByteStream, timeout_s: float) -> None:
        self.stream = stream
        self.timeout_s = timeout_s
        self.buffer = b""

    def send(self, line: str) -> None:
        self.stream.settimeout(self.timeout_s)
        self.stream.sendall(line.encode("ascii") + b"\r\n")

    def reply(self) -> tuple[int, list[str]]:
        """One (possibly multi-line) reply: its code and the text of each line."""
        deadline = time.monotonic() + self.timeout_s
        code: int | None = None
        lines: list[str] = []
        while True:
            while b"\n" not in self.buffer:
                if len(self.buffer) > self.MAX_LINE:
                    raise _SmtpProtocolError("a reply line is too long")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                self.stream.settimeout(remaining)
                chunk = self.stream.recv(4096)
                if not chunk:
                    raise ConnectionError("the server closed the connection")
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\n", 1)
            line = raw.decode("utf-8", "replace").rstrip("\r")
            if not re.fullmatch(r"[2-5][0-9][0-9](?:[ -].*)?", line):
                raise _SmtpProtocolError(f"not an SMTP reply: {line[:80]!r}")
            if code is not None and int(line[:3]) != code:
                raise _SmtpProtocolError("a multi-line reply changed its code")
            code = int(line[:3])
            lines.append(line[4:])
            if line[3:4] != "-":
                return code, lines
            if len(lines) > self.MAX_LINES:
                raise _SmtpProtocolError("a reply has too many lines")


def _auth_mechanisms(capabilities: list[str]) -> list[str]:
    mechanisms: list[str] = []
    for cap in capabilities:
        match = re.match(r"AUTH[ =](.*)", cap, re.IGNORECASE)
        for mech in match.group(1).upper().split() if match else []:
            if mech not in mechanisms:
                mechanisms.append(mech)
    return mechanisms


def _error_kind(message: str) -> str:
    lowered = message.lower()
    if "refused" in lowered:
        return "refused"
    if "timed out" in lowered or "timeout" in lowered:
        return "timeout"
    return "connect"


def _smtp_dialog(reader: _SmtpReader, where: str, helo_name: str,
                 data: dict[str, Any]) -> Check:
    data["phase"] = "banner"
    code, banner = reader.reply()
    data["banner"] = "\n".join(banner)
    if code != 220:
        data["error"] = "rejected"
        return Check("smarthost_smtp", False, f"{where} refused the connection from this host: "
                     f"{code} {banner[0] if banner else ''}".rstrip(), data)
    data["phase"] = "ehlo"
    reader.send(f"EHLO {helo_name}")
    code, ehlo = reader.reply()
    if code != 250:
        data["ehlo_reply"] = f"{code} {' '.join(ehlo)}".rstrip()
        data["phase"] = "helo"
        reader.send(f"HELO {helo_name}")
        code, helo = reader.reply()
        if code != 250:
            data["error"] = "rejected"
            return Check("smarthost_smtp", False, f"{where} refused EHLO and HELO "
                         f"{helo_name}: {code} {' '.join(helo)}".rstrip(), data)
        ehlo = helo[:1]
        data["esmtp"] = False
    else:
        data["esmtp"] = True
    capabilities = [c.strip() for c in ehlo[1:] if c.strip()]
    data["capabilities"] = capabilities
    data["starttls"] = any(c.upper() == "STARTTLS" for c in capabilities)
    data["auth"] = _auth_mechanisms(capabilities)
    data["phase"] = "quit"
    with contextlib.suppress(OSError, ConnectionError):
        reader.send("QUIT")
    data.pop("phase")
    if not data["esmtp"]:
        return Check("smarthost_smtp", True, f"{where} accepts HELO but not EHLO: it offers "
                     "no STARTTLS and no AUTH", data)
    tls = "offers STARTTLS" if data["starttls"] else "does not offer STARTTLS"
    if data["auth"]:
        auth = f"AUTH {' '.join(data['auth'])}"
    else:
        auth = "no AUTH before STARTTLS" if data["starttls"] else "no AUTH"
    return Check("smarthost_smtp", True, f"{where} accepts EHLO {helo_name}, {tls}, {auth}",
                 data)


def check_smtp(executor: Executor, host: str, port: int, timeout_s: float,
               helo_name: str) -> Check:
    """Banner, EHLO and the STARTTLS/AUTH offer of the smarthost, seen from the host."""
    name, _ = _unbracket(host)
    where = f"{name}:{port}"
    data: dict[str, Any] = {"host": name, "port": port}
    if not (0 < port < 65536):
        return Check("smarthost_smtp", False, f"port {port} is not a TCP port", data)
    if not re.fullmatch(r"[A-Za-z0-9.:\[\]_-]{1,255}", helo_name):
        helo_name = "localhost.localdomain"
    try:
        stream = executor.open_tcp(name, port, timeout_s)
    except HostUnreachable:
        raise
    except ExecutorError as exc:
        data["error"] = _error_kind(exc.message)
        return Check("smarthost_smtp", False, f"cannot connect to {where}: {exc.message}", data)
    try:
        return _smtp_dialog(_SmtpReader(stream, timeout_s), where, helo_name, data)
    except TimeoutError:
        data["error"] = "timeout"
        waited = {"banner": "greeting", "ehlo": "EHLO", "helo": "HELO"}.get(
            str(data.get("phase")), "reply")
        return Check("smarthost_smtp", False, f"{where} accepted the connection but sent no "
                     f"{waited} within {timeout_s:g}s", data)
    except _SmtpProtocolError as exc:
        data["error"] = "protocol"
        return Check("smarthost_smtp", False, f"{where} does not speak SMTP: {exc}", data)
    except (OSError, ConnectionError) as exc:
        data["error"] = "closed"
        return Check("smarthost_smtp", False, f"{where} dropped the connection during "
                     f"{data.get('phase', 'the dialog')}: {exc}", data)
    finally:
        with contextlib.suppress(Exception):
            stream.close()


# -- DNS -------------------------------------------------------------------------------------

class DnsTempError(Exception):
    """A DNS query failed in a way that may pass (timeout, SERVFAIL): SPF temperror."""


class TxtAResolver(Protocol):
    """The DNS queries an SPF evaluation needs; a missing name or type answers []."""

    def txt(self, name: str) -> list[str]: ...

    def a(self, name: str) -> list[str]: ...

    def aaaa(self, name: str) -> list[str]: ...

    def mx(self, name: str) -> list[str]: ...


class DnsPythonResolver:
    """:class:`TxtAResolver` over dnspython; NXDOMAIN/no answer is [], failures raise."""

    def __init__(self, nameservers: list[str] | None = None, timeout_s: float = 5.0, *,
                 port: int = 53) -> None:
        import dns.resolver

        if nameservers:
            self._resolver = dns.resolver.Resolver(configure=False)
            self._resolver.port = port
            self._resolver.nameservers = list(nameservers)
        else:
            try:
                self._resolver = dns.resolver.Resolver(configure=True)
            except dns.resolver.NoResolverConfiguration as exc:
                raise DnsTempError(f"no name servers configured: {exc}") from exc
            self._resolver.port = port
        self._resolver.timeout = timeout_s
        self._resolver.lifetime = timeout_s

    def _query(self, name: str, rdtype: str) -> list[Any]:
        import dns.exception
        import dns.name
        import dns.resolver

        try:
            return list(self._resolver.resolve(name, rdtype, search=False))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.name.EmptyLabel, dns.name.LabelTooLong, dns.name.NameTooLong):
            return []  # no such name can exist
        except dns.exception.Timeout as exc:
            raise DnsTempError(f"{rdtype} {name}: no answer in time") from exc
        except dns.resolver.NoNameservers as exc:
            raise DnsTempError(f"{rdtype} {name}: the name servers failed (SERVFAIL)") from exc
        except dns.exception.DNSException as exc:
            raise DnsTempError(f"{rdtype} {name}: {exc.__class__.__name__}") from exc

    def txt(self, name: str) -> list[str]:
        """TXT records, the strings of each joined."""
        return [b"".join(r.strings).decode("utf-8", "replace") for r in self._query(name, "TXT")]

    def a(self, name: str) -> list[str]:
        """IPv4 addresses."""
        return [str(r.address) for r in self._query(name, "A")]

    def aaaa(self, name: str) -> list[str]:
        """IPv6 addresses."""
        return [str(r.address) for r in self._query(name, "AAAA")]

    def mx(self, name: str) -> list[str]:
        """MX exchange names, by preference (a null MX "." is left out)."""
        records = sorted(self._query(name, "MX"), key=lambda r: int(r.preference))
        names = [str(r.exchange).rstrip(".") for r in records]
        return [n for n in names if n]


def resolver_nameservers(executor: Executor) -> list[str]:
    """The name servers the host uses (``nameserver`` lines of /etc/resolv.conf, first 3)."""
    text = executor.read_file_if_exists(RESOLV_CONF) or b""
    servers: list[str] = []
    for line in text.decode("utf-8", "replace").splitlines():
        parts = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            with contextlib.suppress(ValueError):
                servers.append(str(ipaddress.ip_address(parts[1])))
    return servers[:MAX_NAMESERVERS]


def _reachable_nameservers(executor: Executor, servers: list[str]) -> list[str]:
    """Loopback servers are the host's own: usable only when this code runs on the host."""
    if isinstance(executor, LocalExecutor):
        return servers
    return [s for s in servers if not ipaddress.ip_address(s).is_loopback]


# -- SPF (RFC 7208) ----------------------------------------------------------------------------

SPF_RESULTS = ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")
_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MECHANISM = re.compile(r"([+\-~?]?)(all|include|a|mx|ptr|ip4|ip6|exists)(?=$|[:/])(.*)",
                        re.IGNORECASE | re.DOTALL)
_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9_.-]*)=(.*)", re.DOTALL)
_DUAL_CIDR = re.compile(r"(.*?)(?:/([0-9]+))?(?://([0-9]+))?", re.DOTALL)
_MACRO = re.compile(r"%\{([slodiphvSLODIPHV])([0-9]*)(r?)([.\-+,/_=]*)\}", re.DOTALL)
_TOPLABEL = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9]+|[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9]")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass
class SpfResult:
    """An SPF verdict, the term that decided it, and why.

    ``mechanism`` is the deciding term, through includes and redirects joined with " > "
    (``include:_spf.example.net > ip4:192.0.2.0/24``); None for a default result.
    """

    result: str
    mechanism: str | None = None
    record: str | None = None
    reason: str = ""
    lookups: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {"result": self.result, "mechanism": self.mechanism, "record": self.record,
                "reason": self.reason, "lookups": self.lookups, "notes": list(self.notes)}


class _SpfPermError(Exception):
    pass


@dataclass(frozen=True)
class _Term:
    text: str
    qualifier: str
    name: str
    domain_spec: str | None = None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    cidr4: int = 32
    cidr6: int = 128


@dataclass
class _Outcome:
    result: str
    path: list[str] = field(default_factory=list)
    reason: str = ""


def _cidr(text: str | None, maximum: int, term: str) -> int:
    if text is None:
        return maximum
    if not re.fullmatch(r"0|[1-9][0-9]*", text) or int(text) > maximum:
        raise _SpfPermError(f"bad CIDR length in {term!r}")
    return int(text)


def _check_domain_spec(spec: str, term: str) -> str:
    """RFC 7208 section 7.1 syntax: macro-string ending in a macro or in '.' toplabel."""
    if not spec:
        raise _SpfPermError(f"{term!r} needs a domain")
    bare = _MACRO.sub("", spec.replace("%%", "").replace("%_", "").replace("%-", ""))
    if "%" in bare:
        raise _SpfPermError(f"bad macro in {term!r}")
    if any(not 0x21 <= ord(ch) <= 0x7E for ch in bare):
        raise _SpfPermError(f"bad character in {term!r}")
    if _MACRO.search(spec) and re.search(r"\}\.?$", spec):
        return spec
    labels = (spec[:-1] if spec.endswith(".") else spec).split(".")
    if len(labels) < 2 or not _TOPLABEL.fullmatch(labels[-1]):
        raise _SpfPermError(f"{term!r} does not end in a domain name")
    return spec


def _parse_term(text: str) -> _Term | tuple[str, str]:
    """A mechanism, or a modifier as (name, value); raises _SpfPermError on bad syntax."""
    match = _MECHANISM.fullmatch(text)
    if match is None:
        modifier = _MODIFIER.fullmatch(text)
        if modifier is None:
            raise _SpfPermError(f"unknown mechanism {text!r}")
        return modifier.group(1).lower(), modifier.group(2)
    qualifier = _QUALIFIERS[match.group(1) or "+"]
    name, rest = match.group(2).lower(), match.group(3)
    if name == "all":
        if rest:
            raise _SpfPermError(f"'all' takes no argument: {text!r}")
        return _Term(text, qualifier, name)
    if name in ("ip4", "ip6"):
        if not rest.startswith(":"):
            raise _SpfPermError(f"{text!r} needs an address")
        address, slash, length = rest[1:].partition("/")
        try:
            ip: Address = (ipaddress.IPv4Address(address) if name == "ip4"
                           else ipaddress.IPv6Address(address))
        except ValueError:
            raise _SpfPermError(f"bad address in {text!r}") from None
        cidr = _cidr(length if slash else None, ip.max_prefixlen, text)
        network = ipaddress.ip_network(f"{ip}/{cidr}", strict=False)
        return _Term(text, qualifier, name, network=network)
    if name in ("a", "mx"):
        cidr_match = _DUAL_CIDR.fullmatch(rest)
        assert cidr_match is not None  # the pattern matches any string
        spec_part, c4, c6 = cidr_match.groups()
        spec: str | None = None
        if spec_part:
            if not spec_part.startswith(":"):
                raise _SpfPermError(f"bad syntax in {text!r}")
            spec = _check_domain_spec(spec_part[1:], text)
        return _Term(text, qualifier, name, spec, cidr4=_cidr(c4, 32, text),
                     cidr6=_cidr(c6, 128, text))
    # include, exists, ptr
    if not rest:
        if name != "ptr":
            raise _SpfPermError(f"{text!r} needs a domain")
        return _Term(text, qualifier, name)
    if not rest.startswith(":"):
        raise _SpfPermError(f"bad syntax in {text!r}")
    return _Term(text, qualifier, name, _check_domain_spec(rest[1:], text))


def _parse_record(record: str) -> tuple[list[_Term], str | None]:
    """The mechanisms in order and the redirect target; any syntax error is a permerror."""
    terms: list[_Term] = []
    modifiers: dict[str, str] = {}
    for text in record.split()[1:]:
        parsed = _parse_term(text)
        if isinstance(parsed, _Term):
            terms.append(parsed)
            continue
        name, value = parsed
        if name in ("redirect", "exp"):
            if name in modifiers:
                raise _SpfPermError(f"more than one {name}= modifier")
            modifiers[name] = _check_domain_spec(value, text)
    return terms, modifiers.get("redirect")


class _SpfEvaluator:
    """One check_host() evaluation with its shared lookup counters."""

    def __init__(self, ip: Address, resolver: TxtAResolver, sender_domain: str,
                 local_part: str, helo: str) -> None:
        self.ip = ip
        self.resolver = resolver
        self.sender_domain = sender_domain
        self.local_part = local_part
        self.helo = helo
        self.lookups = 0
        self.voids = 0
        self.notes: list[str] = []
        self.top_record: str | None = None

    def count(self) -> None:
        self.lookups += 1
        if self.lookups > SPF_LOOKUP_LIMIT:
            raise _SpfPermError(f"more than {SPF_LOOKUP_LIMIT} DNS-querying terms")

    def void(self, answers: list[str]) -> list[str]:
        if not answers:
            self.voids += 1
            if self.voids > SPF_VOID_LIMIT:
                raise _SpfPermError(f"more than {SPF_VOID_LIMIT} lookups found nothing")
        return answers

    def addresses(self, name: str) -> list[str]:
        return self.resolver.a(name) if self.ip.version == 4 else self.resolver.aaaa(name)

    def matches(self, candidates: list[str], term: _Term) -> bool:
        prefix = term.cidr4 if self.ip.version == 4 else term.cidr6
        for text in candidates:
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                continue
            if (address.version == self.ip.version and
                    self.ip in ipaddress.ip_network(f"{address}/{prefix}", strict=False)):
                return True
        return False

    # macros (RFC 7208 section 7) -----------------------------------------------------
    def macro_value(self, letter: str, domain: str) -> str:
        if letter == "i":
            if self.ip.version == 4:
                return str(self.ip)
            return ".".join(self.ip.exploded.replace(":", ""))
        return {
            "s": f"{self.local_part}@{self.sender_domain}",
            "l": self.local_part,
            "o": self.sender_domain,
            "d": domain,
            "p": "unknown",
            "v": "in-addr" if self.ip.version == 4 else "ip6",
            "h": self.helo,
        }[letter]

    def expand(self, spec: str, domain: str) -> str:
        out: list[str] = []
        i = 0
        while i < len(spec):
            ch = spec[i]
            if ch != "%":
                out.append(ch)
                i += 1
                continue
            nxt = spec[i + 1:i + 2]
            if nxt in ("%", "_", "-"):
                out.append({"%": "%", "_": " ", "-": "%20"}[nxt])
                i += 2
                continue
            match = _MACRO.match(spec, i)
            if match is None:
                raise _SpfPermError(f"bad macro in {spec!r}")
            letter, digits, reverse, delimiters = match.groups()
            parts = re.split("[" + re.escape(delimiters or ".") + "]",
                             self.macro_value(letter.lower(), domain))
            if reverse:
                parts.reverse()
            if digits:
                if int(digits) == 0:
                    raise _SpfPermError(f"bad macro in {spec!r}")
                parts = parts[-int(digits):]
            value = ".".join(parts)
            if letter.isupper():
                value = re.sub(r"[^A-Za-z0-9\-._~]",
                               lambda m: "".join(f"%{b:02X}" for b in m.group().encode()),
                               value)
            out.append(value)
            i = match.end()
        target = "".join(out).rstrip(".")
        while len(target) > 253 and "." in target:  # section 7.3: drop labels on the left
            target = target.split(".", 1)[1]
        return target

    # check_host() --------------------------------------------------------------------
    def record_of(self, domain: str) -> str | None:
        records = [t for t in self.resolver.txt(domain)
                   if t.lower() == "v=spf1" or t.lower().startswith("v=spf1 ")]
        if len(records) > 1:
            raise _SpfPermError(f"{domain} publishes {len(records)} SPF records")
        return records[0] if records else None

    def check_host(self, domain: str, top: bool = False) -> _Outcome:
        record = self.record_of(domain)
        if top:
            self.top_record = record
        if record is None:
            return _Outcome("none", reason=f"{domain} publishes no SPF record")
        terms, redirect = _parse_record(record)
        for term in terms:
            path = self.match(term, domain)
            if path is not None:
                return _Outcome(term.qualifier, path)
        if redirect is not None:
            self.count()
            target = self.expand(redirect, domain)
            inner = self.check_host(target)
            if inner.result == "none":
                raise _SpfPermError(f"redirect={target} has no SPF record")
            return _Outcome(inner.result, [f"redirect={redirect}", *inner.path], inner.reason)
        return _Outcome("neutral", reason=f"no mechanism of {domain}'s record matched")

    def match(self, term: _Term, domain: str) -> list[str] | None:
        """The path to the deciding term if ``term`` matches, else None."""
        name = term.name
        if name == "all":
            return [term.text]
        if term.network is not None:
            hit = term.network.version == self.ip.version and self.ip in term.network
            return [term.text] if hit else None
        self.count()
        target = self.expand(term.domain_spec, domain) if term.domain_spec else domain
        if name == "a":
            hit = self.matches(self.void(self.addresses(target)), term)
        elif name == "mx":
            exchanges = self.void(self.resolver.mx(target))
            if len(exchanges) > SPF_MX_LIMIT:
                raise _SpfPermError(f"{target} has more than {SPF_MX_LIMIT} MX records")
            hit = any(self.matches(self.addresses(ex), term) for ex in exchanges)
        elif name == "exists":
            hit = bool(self.void(self.resolver.a(target)))
        elif name == "include":
            inner = self.check_host(target)
            if inner.result == "none":  # errors inside propagate as exceptions
                raise _SpfPermError(f"include:{target} has no SPF record")
            return [term.text, *inner.path] if inner.result == "pass" else None
        else:  # ptr: deprecated (RFC 7208 section 5.5), needs reverse DNS: never matches here
            self.notes.append(f"{term.text} was not evaluated (ptr is deprecated)")
            hit = False
        return [term.text] if hit else None


def _evaluate(evaluator: _SpfEvaluator, domain: str) -> SpfResult:
    outcome = _run_host(evaluator, domain)
    return SpfResult(outcome.result, " > ".join(outcome.path) or None, evaluator.top_record,
                     outcome.reason, evaluator.lookups, evaluator.notes)


def _run_host(evaluator: _SpfEvaluator, domain: str) -> _Outcome:
    try:
        return evaluator.check_host(domain, top=True)
    except _SpfPermError as exc:
        return _Outcome("permerror", reason=str(exc))
    except DnsTempError as exc:
        return _Outcome("temperror", reason=f"DNS failed: {exc}")


def spf_covers(domain: str, ip: str, resolver: TxtAResolver, *,
               local_part: str = "postmaster", helo: str | None = None) -> SpfResult:
    """Evaluate ``domain``'s SPF policy for mail from ``ip`` (RFC 7208 check_host()).

    The sender is taken as ``local_part@domain`` (for macros). ``ptr`` never matches.
    """
    try:
        address: Address = ipaddress.ip_address(ip)
    except ValueError:
        raise ValidationError.for_field("public_ip", "must be an IPv4 or IPv6 address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    name = domain.lower().rstrip(".")
    if _not_a_domain(name):
        return SpfResult("none", reason=f"{domain!r} is not a domain name")
    evaluator = _SpfEvaluator(address, resolver, name, local_part, helo or name)
    return _evaluate(evaluator, name)


def _not_a_domain(name: str) -> bool:
    labels = name.split(".")
    return (not name or len(name) > 253 or
            not all(re.fullmatch(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?", x) for x in labels))


def _spf_term_for(public_ip: str) -> str:
    return f"ip6:{public_ip}" if ":" in public_ip else f"ip4:{public_ip}"


def check_spf(domain: str | None, public_ip: str | None,
              resolver: TxtAResolver | None) -> Check:
    """Does ``domain``'s SPF record authorise ``public_ip``? Skipped (ok None) without both."""
    if not domain:
        return Check("spf", None, "skipped: give a domain (and the host's public address) to "
                     "check that its SPF record covers this host")
    if not public_ip:
        return Check("spf", None, f"skipped: give the host's public address to check "
                     f"{domain}'s SPF record")
    try:
        verdict = spf_covers(domain, public_ip, resolver or DnsPythonResolver())
    except DnsTempError as exc:
        verdict = SpfResult("temperror", reason=str(exc))
    data = {"domain": domain, "public_ip": public_ip, **verdict.to_dict()}
    term = _spf_term_for(public_ip)
    if verdict.result == "pass":
        return Check("spf", True, f"{domain}'s SPF record authorises {public_ip} "
                     f"({verdict.mechanism})", data)
    if verdict.result == "none":
        return Check("spf", False, f"{domain} publishes no SPF record: publish a TXT record "
                     f"'v=spf1 {term} ~all' (plus your other senders)", data)
    if verdict.result == "permerror":
        return Check("spf", False, f"{domain}'s SPF record is broken ({verdict.reason}): "
                     f"receivers treat it as an error; fix it and add {term}", data)
    if verdict.result == "temperror":
        return Check("spf", False, f"could not check {domain}'s SPF record: {verdict.reason}",
                     data)
    how = f" by {verdict.mechanism}" if verdict.mechanism else " (no mechanism matched)"
    return Check("spf", False, f"{domain}'s SPF record gives {verdict.result} for {public_ip}"
                 f"{how}: add {term} to it, before any 'all'", data)


# -- everything -------------------------------------------------------------------------------

def validate_diagnose_input(domain: str | None,
                            public_ip: str | None) -> tuple[str | None, str | None]:
    """Normalise ``domain`` (RFC 1123) and ``public_ip``; raise ValidationError on bad ones."""
    if domain is not None:
        domain = validate_hostname(domain, "domain")
        if domain.startswith("["):
            raise ValidationError.for_field("domain", "must be a domain name, not an address")
    if public_ip is not None:
        if not isinstance(public_ip, str) or "%" in public_ip:
            raise ValidationError.for_field("public_ip", "must be an IPv4 or IPv6 address")
        try:
            public_ip = str(ipaddress.ip_address(public_ip))
        except ValueError:
            raise ValidationError.for_field("public_ip", "must be an IPv4 or IPv6 address"
                                            ) from None
    return domain, public_ip


def _guarded(name: str, run: Callable[[], Check]) -> Check:
    """Run one check; an executor failure (not an unreachable host) becomes ok=False."""
    try:
        return run()
    except HostUnreachable:
        raise
    except RelayfleetError as exc:
        return Check(name, False, f"could not check: {exc.message}")


def run_checks(executor: Executor, profile: HostProfile, *, smarthost_host: str | None,
               smarthost_port: int, domain: str | None, public_ip: str | None,
               config_check: Check | None, resolver: TxtAResolver | None = None,
               timeout_s: float = 10.0) -> list[Check]:
    """All checks in the seed story's order (config_check is left out when None)."""
    domain, public_ip = validate_diagnose_input(domain, public_ip)
    name = _guarded("hostname_fqdn", lambda: check_hostname(executor))
    hostname = str(name.data.get("hostname", ""))
    fqdn = str(name.data.get("fqdn", ""))
    checks = [name,
              _guarded("hosts_file", lambda: check_hosts_file(executor, hostname, fqdn)),
              _guarded("mta_running", lambda: check_mta_running(executor, profile.pid_file))]
    if config_check is not None:
        checks.append(config_check)
    if not smarthost_host:
        checks.append(Check("smarthost_resolves", False, NO_SMARTHOST))
        checks.append(Check("smarthost_smtp", False, NO_SMARTHOST))
    else:
        host = smarthost_host
        resolved = _guarded("smarthost_resolves", lambda: check_resolves(executor, host))
        checks.append(resolved)
        if resolved.ok:
            helo = fqdn or hostname or "localhost.localdomain"
            checks.append(_guarded("smarthost_smtp", lambda: check_smtp(
                executor, host, smarthost_port, timeout_s, helo)))
        else:
            checks.append(Check("smarthost_smtp", False, f"not tried: {host} does not resolve "
                                "on this host", {"host": host, "port": smarthost_port}))
    if domain and public_ip and resolver is None:
        try:
            servers = _reachable_nameservers(executor, resolver_nameservers(executor))
            resolver = DnsPythonResolver(servers or None, timeout_s)
        except HostUnreachable:
            raise
        except (RelayfleetError, DnsTempError) as exc:
            reason = exc.message if isinstance(exc, RelayfleetError) else str(exc)
            checks.append(Check("spf", False, f"could not check {domain}'s SPF record: "
                                f"{reason}", {"domain": domain, "public_ip": public_ip}))
            return checks
    checks.append(check_spf(domain, public_ip, resolver))
    return checks
