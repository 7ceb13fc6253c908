"""The seed story's checklist as machine checks, run through an executor.

Host-side facts come from tools every old box has (``hostname``, ``getent``, ``kill -0``,
``cat``); the SMTP probe opens its TCP connection *from the host* (``Executor.open_tcp``);
the SPF check asks the DNS servers the host itself uses, with dnspython.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.errors import ExecutorError, RelayfleetError, ValidationError
from shared.executor import ByteStream, CommandResult, Executor
from shared.profile import HostProfile
from shared.validation import validate_hostname

SPF_LOOKUP_LIMIT = 10


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


# -- hostname and /etc/hosts ------------------------------------------------------------

#: the commands :func:`hostname_check` reads (batched by callers)
HOSTNAME_COMMANDS: tuple[tuple[str, list[str]], ...] = (
    ("hostname", ["uname", "-n"]), ("fqdn", ["hostname", "-f"]))
#: prints the pid in the pid file ($1) and exits 0 if it runs; exit 3 when there is no pid
ALIVE_SCRIPT = ('[ -r "$1" ] || exit 3; read p rest < "$1" || exit 3; '
                'case "$p" in ""|*[!0-9]*) exit 3 ;; esac; echo "$p"; exec kill -0 "$p"')


def alive_command(pid_file: str) -> list[str]:
    """An argv that says whether the daemon in ``pid_file`` runs (see ALIVE_SCRIPT)."""
    return ["sh", "-c", ALIVE_SCRIPT, "sh", pid_file]


def check_hostname(executor: Executor) -> Check:
    """Is the host's name fully qualified (``hostname -f``)?"""
    short, full = executor.run_many([argv for _, argv in HOSTNAME_COMMANDS], timeout=15)
    return hostname_check(short, full)


def hostname_check(short: CommandResult, full: CommandResult) -> Check:
    """Judge ``uname -n`` and ``hostname -f`` output."""
    name = short.stdout_text().strip() if short.ok else ""
    fqdn = full.stdout_text().strip() if full.ok else ""
    fqdn = fqdn or name
    data = {"hostname": name.split(".")[0], "fqdn": fqdn}
    if "." not in fqdn or fqdn.startswith("localhost"):
        return Check("hostname_fqdn", False,
                     f"the host calls itself {fqdn!r}, which is not fully qualified: give it a "
                     "name like pbx1.example.com (hostname and /etc/hosts)", data)
    return Check("hostname_fqdn", True, f"fully qualified as {fqdn}", data)


def hosts_file_problems(hosts_text: str, hostname: str, fqdn: str) -> list[str]:
    """What is wrong with /etc/hosts for this host, as sentences saying what to fix."""
    problems: list[str] = []
    entries: list[tuple[str, list[str]]] = []
    for raw in hosts_text.splitlines():
        line = raw.split("#", 1)[0].split()
        if len(line) >= 2:
            entries.append((line[0], line[1:]))
    if "." not in fqdn:
        return [f"no fully qualified name to look for (the host is {fqdn!r})"]
    with_fqdn = [(addr, names) for addr, names in entries if fqdn in names]
    if not with_fqdn:
        return [f"/etc/hosts has no line for {fqdn}: add '<address> {fqdn} {hostname}'"]
    public = [(a, n) for a, n in with_fqdn if not _is_loopback(a)]
    if not public:
        problems.append(f"{fqdn} is only mapped to a loopback address: map it to the host's "
                        f"own address, e.g. '192.0.2.10 {fqdn} {hostname}'")
    for addr, names in public:
        if names[0] != fqdn:
            problems.append(f"on the line for {addr}, put {fqdn} first (sendmail takes the "
                            f"canonical name from it), then {hostname}")
        if hostname and hostname != fqdn and hostname not in names:
            problems.append(f"add the short name {hostname} to the line for {addr}")
    return problems


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def check_hosts_file(executor: Executor, hostname: str, fqdn: str) -> Check:
    """Does /etc/hosts map the FQDN to a real address, FQDN first?"""
    return hosts_file_check(executor.read_file_if_exists("/etc/hosts"), hostname, fqdn)


def hosts_file_check(text: bytes | None, hostname: str, fqdn: str) -> Check:
    """Judge /etc/hosts (None when missing)."""
    if text is None:
        return Check("hosts_file", False, "/etc/hosts is missing", {"problems": ["missing"]})
    problems = hosts_file_problems(text.decode("utf-8", "replace"), hostname, fqdn)
    detail = "; ".join(problems) if problems else f"/etc/hosts maps {fqdn}"
    return Check("hosts_file", not problems, detail, {"problems": problems})


# -- MTA and smarthost ---------------------------------------------------------------------

def check_mta_running(executor: Executor, pid_file: str) -> Check:
    """Is the MTA's daemon alive (pid file + ``kill -0``)?"""
    return mta_running_check(executor.run(alive_command(pid_file), timeout=10), pid_file)


def mta_running_check(result: CommandResult, pid_file: str) -> Check:
    """Judge the output of :func:`alive_command`."""
    text = result.stdout_text().strip()
    if not text.isdigit():
        return Check("mta_running", False, f"no pid in {pid_file}: the MTA is not running; "
                     "start it (service sendmail start)", {"pid": None})
    pid = int(text)
    alive = result.ok
    if not alive:
        return Check("mta_running", False, f"pid {pid} from {pid_file} is not running: "
                     "restart the MTA", {"pid": pid})
    return Check("mta_running", True, f"running as pid {pid}", {"pid": pid})


def check_resolves(executor: Executor, host: str) -> Check:
    """Does the host resolve the smarthost's name (``getent hosts``)?"""
    name = host.strip("[]")
    if name.lower().startswith("ipv6:") or re.fullmatch(r"[0-9.]+", name):
        return Check("smarthost_resolves", True, f"{host} is an address literal",
                     {"addresses": [name.split(":", 1)[-1] if "ipv6" in name.lower() else name]})
    out = executor.run(["getent", "hosts", name], timeout=20)
    addresses = sorted({ln.split()[0] for ln in out.stdout_text().splitlines() if ln.split()})
    if not out.ok or not addresses:
        return Check("smarthost_resolves", False, f"{name} does not resolve on this host: check "
                     "/etc/resolv.conf and the name", {"addresses": []})
    return Check("smarthost_resolves", True, f"{name} resolves to {', '.join(addresses)}",
                 {"addresses": addresses})


class _SmtpReader:
    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self.buffer = b""

    def reply(self) -> tuple[int, list[str]]:
        lines: list[str] = []
        while True:
            while b"\n" not in self.buffer:
                chunk = self.stream.recv(4096)
                if not chunk:
                    raise ConnectionError("the server closed the connection")
                self.buffer += chunk
                if len(self.buffer) > 65536:
                    raise ConnectionError("reply too long")
            raw, self.buffer = self.buffer.split(b"\n", 1)
            line = raw.decode("utf-8", "replace").rstrip("\r")
            if len(line) < 3 or not line[:3].isdigit():
                raise ConnectionError(f"not an SMTP reply: {line[:80]!r}")
            lines.append(line[4:])
            if line[3:4] != "-":
                return int(line[:3]), lines


@contextlib.contextmanager
def _closing(stream: ByteStream) -> Iterator[ByteStream]:
    try:
        yield stream
    finally:
        with contextlib.suppress(Exception):
            stream.close()


def check_smtp(executor: Executor, host: str, port: int, timeout_s: float,
               helo_name: str) -> Check:
    """Banner, EHLO and the STARTTLS/AUTH offer of the smarthost, seen from the host."""
    name = host.strip("[]")
    if name.lower().startswith("ipv6:"):
        name = name[5:]
    data: dict[str, Any] = {"host": name, "port": port}
    try:
        with _closing(executor.open_tcp(name, port, timeout_s)) as stream:
            stream.settimeout(timeout_s)
            reader = _SmtpReader(stream)
            code, banner = reader.reply()
            data["banner"] = banner[0] if banner else ""
            if code != 220:
                return Check("smarthost_smtp", False,
                             f"{name}:{port} greeted with {code} {data['banner']}", data)
            stream.sendall(f"EHLO {helo_name}\r\n".encode())
            code, caps = reader.reply()
            if code != 250:
                return Check("smarthost_smtp", False, f"{name}:{port} refused EHLO: {code}", data)
            keywords = [c.split()[0].upper() for c in caps[1:] if c.split()]
            data["starttls"] = "STARTTLS" in keywords
            data["auth"] = next((c.split()[1:] for c in caps[1:]
                                 if c.upper().startswith("AUTH")), [])
            with contextlib.suppress(Exception):
                stream.sendall(b"QUIT\r\n")
    except TimeoutError:
        return Check("smarthost_smtp", False,
                     f"{name}:{port} did not answer within {timeout_s:g}s", data)
    except (OSError, ConnectionError, ExecutorError) as exc:
        message = exc.message if isinstance(exc, RelayfleetError) else str(exc)
        return Check("smarthost_smtp", False, f"cannot talk SMTP to {name}:{port}: {message}",
                     data)
    tls = "offers STARTTLS" if data["starttls"] else "does not offer STARTTLS"
    return Check("smarthost_smtp", True, f"{name}:{port} accepts EHLO and {tls}", data)


# -- SPF -----------------------------------------------------------------------------------

class DnsTempError(Exception):
    """A DNS query failed in a way that may pass (timeout, SERVFAIL)."""


class TxtAResolver(Protocol):
    """The DNS queries an SPF evaluation needs; missing names answer []."""

    def txt(self, name: str) -> list[str]: ...

    def a(self, name: str) -> list[str]: ...

    def aaaa(self, name: str) -> list[str]: ...

    def mx(self, name: str) -> list[str]: ...


class DnsPythonResolver:
    """:class:`TxtAResolver` over dnspython, asking the given name servers."""

    def __init__(self, nameservers: list[str] | None = None, timeout_s: float = 5.0) -> None:
        import dns.resolver

        self._resolver = dns.resolver.Resolver(configure=not nameservers)
        if nameservers:
            self._resolver.nameservers = nameservers
        self._resolver.lifetime = timeout_s

    def _query(self, name: str, rdtype: str) -> list[Any]:
        import dns.exception
        import dns.resolver

        try:
            return list(self._resolver.resolve(name, rdtype))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise DnsTempError(f"{rdtype} {name}: {exc.__class__.__name__}") from exc

    def txt(self, name: str) -> list[str]:
        """TXT strings (multi-part records joined)."""
        return [b"".join(r.strings).decode("utf-8", "replace") for r in self._query(name, "TXT")]

    def a(self, name: str) -> list[str]:
        """IPv4 addresses."""
        return [r.address for r in self._query(name, "A")]

    def aaaa(self, name: str) -> list[str]:
        """IPv6 addresses."""
        return [r.address for r in self._query(name, "AAAA")]

    def mx(self, name: str) -> list[str]:
        """MX exchange names."""
        return [str(r.exchange).rstrip(".") for r in self._query(name, "MX")]


@dataclass
class SpfResult:
    """An SPF verdict and the term that decided it."""

    result: str
    mechanism: str | None = None
    record: str | None = None


class _SpfPermError(Exception):
    pass


_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}


def spf_covers(domain: str, ip: str, resolver: TxtAResolver) -> SpfResult:
    """Evaluate ``domain``'s SPF policy for ``ip`` (RFC 7208, without macros)."""
    address = ipaddress.ip_address(ip)
    counter = [0]
    try:
        return _spf_eval(domain, address, resolver, counter, depth=0)
    except _SpfPermError as exc:
        return SpfResult("permerror", str(exc))
    except DnsTempError as exc:
        return SpfResult("temperror", str(exc))


def _spf_record(domain: str, resolver: TxtAResolver) -> str | None:
    records = [t for t in resolver.txt(domain) if t.lower() == "v=spf1" or
               t.lower().startswith("v=spf1 ")]
    if len(records) > 1:
        raise _SpfPermError(f"{domain} publishes {len(records)} SPF records")
    return records[0] if records else None


def _count(counter: list[int]) -> None:
    counter[0] += 1
    if counter[0] > SPF_LOOKUP_LIMIT:
        raise _SpfPermError(f"more than {SPF_LOOKUP_LIMIT} DNS lookups")


def _in_network(address: ipaddress.IPv4Address | ipaddress.IPv6Address, target: str,
                cidr4: int, cidr6: int) -> bool:
    candidate = ipaddress.ip_address(target)
    if candidate.version != address.version:
        return False
    prefix = cidr4 if candidate.version == 4 else cidr6
    return address in ipaddress.ip_network(f"{candidate}/{prefix}", strict=False)


def _spf_eval(domain: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address,
              resolver: TxtAResolver, counter: list[int], depth: int) -> SpfResult:
    record = _spf_record(domain, resolver)
    if record is None:
        return SpfResult("none", record=None)
    redirect: str | None = None
    for term in record.split()[1:]:
        if term.lower().startswith("redirect="):
            redirect = term.split("=", 1)[1]
            continue
        if "=" in term.split(":", 1)[0]:
            continue  # other modifiers (exp=) do not decide
        qualifier = _QUALIFIERS.get(term[0])
        body = term[1:] if qualifier else term
        qualifier = qualifier or "pass"
        mech, _, arg = body.partition(":")
        mech, cidr4, cidr6 = _split_cidr(mech, arg)
        if mech.lower().startswith(("a", "mx")) and "/" in arg:
            arg, cidr4, cidr6 = _arg_cidr(arg)
        name = mech.lower()
        matched = False
        if name == "all":
            matched = True
        elif name in ("ip4", "ip6"):
            net_text = arg if "/" in arg else f"{arg}/{32 if name == 'ip4' else 128}"
            try:
                network = ipaddress.ip_network(net_text, strict=False)
            except ValueError as exc:
                raise _SpfPermError(f"bad {term}") from exc
            matched = network.version == address.version and address in network
        elif name == "a":
            _count(counter)
            target = arg or domain
            matched = any(_in_network(address, t, cidr4, cidr6)
                          for t in resolver.a(target) + resolver.aaaa(target))
        elif name == "mx":
            _count(counter)
            for exchange in resolver.mx(arg or domain)[:10]:
                if any(_in_network(address, t, cidr4, cidr6)
                       for t in resolver.a(exchange) + resolver.aaaa(exchange)):
                    matched = True
                    break
        elif name == "include":
            _count(counter)
            if depth > SPF_LOOKUP_LIMIT:
                raise _SpfPermError("include loop")
            inner = _spf_eval(arg, address, resolver, counter, depth + 1)
            if inner.result == "none":
                raise _SpfPermError(f"include:{arg} has no SPF record")
            if inner.result in ("permerror", "temperror"):
                return inner
            matched = inner.result == "pass"
        elif name == "exists":
            _count(counter)
            matched = bool(resolver.a(arg))
        elif name == "ptr":
            _count(counter)
            continue  # deprecated by RFC 7208 and not evaluated
        else:
            raise _SpfPermError(f"unknown mechanism {term!r}")
        if matched:
            return SpfResult(qualifier, term, record)
    if redirect:
        _count(counter)
        result = _spf_eval(redirect, address, resolver, counter, depth + 1)
        if result.result == "none":
            raise _SpfPermError(f"redirect={redirect} has no SPF record")
        return result
    return SpfResult("neutral", None, record)


def _split_cidr(mech: str, arg: str) -> tuple[str, int, int]:
    if "/" in mech:  # "a/24" or "mx/24//64"
        name, _, rest = mech.partition("/")
        c4, _, c6 = rest.partition("//")
        return name, int(c4 or 32), int(c6 or 128)
    return mech, 32, 128


def _arg_cidr(arg: str) -> tuple[str, int, int]:
    name, _, rest = arg.partition("/")
    c4, _, c6 = rest.partition("//")
    try:
        return name, int(c4 or 32), int(c6 or 128)
    except ValueError as exc:
        raise _SpfPermError(f"bad CIDR in {arg!r}") from exc


def resolver_nameservers(executor: Executor) -> list[str]:
    """The name servers the host uses (``nameserver`` lines of /etc/resolv.conf)."""
    text = executor.read_file_if_exists("/etc/resolv.conf") or b""
    servers = []
    for line in text.decode("utf-8", "replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            with contextlib.suppress(ValueError):
                servers.append(str(ipaddress.ip_address(parts[1])))
    return servers


def check_spf(domain: str | None, public_ip: str | None, resolver: TxtAResolver) -> Check:
    """Does ``domain``'s SPF record authorise ``public_ip``?"""
    if not domain:
        return Check("spf", None, "skipped: give a domain (and the host's public address) to "
                     "check its SPF record")
    if not public_ip:
        return Check("spf", None, f"skipped: give the host's public address to check {domain}")
    verdict = spf_covers(domain, public_ip, resolver)
    data = {"result": verdict.result, "mechanism": verdict.mechanism, "record": verdict.record}
    if verdict.result == "pass":
        return Check("spf", True, f"{domain}'s SPF record authorises {public_ip} "
                     f"({verdict.mechanism})", data)
    if verdict.result == "none":
        return Check("spf", False, f"{domain} publishes no SPF record: add one that includes "
                     f"ip4:{public_ip}", data)
    return Check("spf", False, f"{domain}'s SPF record gives {verdict.result} for {public_ip}: "
                 f"add ip4:{public_ip} to it", data)


def validate_diagnose_input(domain: str | None, public_ip: str | None) -> None:
    """Refuse a malformed domain or address before anything runs."""
    if domain is not None:
        literal = validate_hostname(domain, "domain")
        if literal.startswith("["):
            raise ValidationError.for_field("domain", "must be a domain name, not an address")
    if public_ip is not None:
        try:
            ipaddress.ip_address(public_ip)
        except ValueError:
            raise ValidationError.for_field("public_ip", "must be an IPv4 or IPv6 address"
                                            ) from None


def run_checks(executor: Executor, profile: HostProfile, *, smarthost_host: str | None,
               smarthost_port: int, domain: str | None, public_ip: str | None,
               config_check: Check | None, resolver: TxtAResolver | None = None,
               timeout_s: float = 10.0) -> list[Check]:
    """All checks, in the seed story's order."""
    validate_diagnose_input(domain, public_ip)
    name = check_hostname(executor)
    checks = [name, check_hosts_file(executor, str(name.data["hostname"]),
                                     str(name.data["fqdn"])),
              check_mta_running(executor, profile.pid_file)]
    if config_check is not None:
        checks.append(config_check)
    if smarthost_host is None:
        checks.append(Check("smarthost_resolves", False, "no smarthost is configured"))
        checks.append(Check("smarthost_smtp", False, "no smarthost is configured"))
    else:
        resolved = check_resolves(executor, smarthost_host)
        checks.append(resolved)
        if resolved.ok:
            checks.append(check_smtp(executor, smarthost_host, smarthost_port, timeout_s,
                                     str(name.data["fqdn"]) or "localhost"))
        else:
            checks.append(Check("smarthost_smtp", False, "skipped: the smarthost does not "
                                "resolve"))
    if resolver is None and domain:
        resolver = DnsPythonResolver(resolver_nameservers(executor) or None, timeout_s)
    checks.append(check_spf(domain, public_ip, resolver) if resolver else
                  check_spf(None, public_ip, _NoResolver()))
    return checks


class _NoResolver:
    def txt(self, name: str) -> list[str]:
        return []

    def a(self, name: str) -> list[str]:
        return []

    def aaaa(self, name: str) -> list[str]:
        return []

    def mx(self, name: str) -> list[str]:
        return []
