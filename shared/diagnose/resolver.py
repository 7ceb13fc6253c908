"""DNS for the SPF check: dnspython against the name servers the host itself uses."""

from __future__ import annotations

import contextlib
import ipaddress
from typing import Any, Protocol

from shared.executor import Executor, LocalExecutor

#: glibc uses the first three ``nameserver`` lines (MAXNS)
MAX_NAMESERVERS = 3
RESOLV_CONF = "/etc/resolv.conf"


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


def reachable_nameservers(executor: Executor, servers: list[str]) -> list[str]:
    """Loopback servers are the host's own: usable only when this code runs on the host."""
    if isinstance(executor, LocalExecutor):
        return servers
    return [s for s in servers if not ipaddress.ip_address(s).is_loopback]
