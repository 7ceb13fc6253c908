"""The whole checklist in the seed story's order, and the validation of its inputs."""

from __future__ import annotations

from collections.abc import Callable

from shared.diagnose.check import Check
from shared.diagnose.hosts import (
    check_hostname,
    check_hosts_file,
    check_mta_running,
    check_resolves,
)
from shared.diagnose.resolver import (
    DnsPythonResolver,
    DnsTempError,
    TxtAResolver,
    reachable_nameservers,
    resolver_nameservers,
)
from shared.diagnose.smtp import check_smtp
from shared.diagnose.spf import check_spf
from shared.errors import HostUnreachable, RelayfleetError
from shared.executor import Executor
from shared.profile import HostProfile
from shared.validation import validate_domain, validate_ip_address

NO_SMARTHOST = "no smarthost is configured"

def validate_diagnose_input(domain: str | None,
                            public_ip: str | None) -> tuple[str | None, str | None]:
    """Normalise ``domain`` (RFC 1123) and ``public_ip``; raise ValidationError on bad ones."""
    return (None if domain is None else validate_domain(domain),
            None if public_ip is None else validate_ip_address(public_ip))


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
              _guarded("mta_running", lambda: check_mta_running(executor, profile.daemon_pid_file))]
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
            servers = reachable_nameservers(executor, resolver_nameservers(executor))
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
