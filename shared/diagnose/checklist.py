"""The whole checklist in the seed story's order, and the validation of its inputs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

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
from shared.diagnose.smtp import probe_smtp
from shared.diagnose.spf import check_spf
from shared.diagnose.tls import read_ca_bundle, tls_check
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


def _smarthost_checks(executor: Executor, profile: HostProfile, host: str, port: int, *,
                      helo: str, tls: Mapping[str, Any] | None,
                      timeout_s: float) -> list[Check]:
    """smarthost_resolves, smarthost_smtp and smarthost_tls."""
    resolved = _guarded("smarthost_resolves", lambda: check_resolves(executor, host))
    if not resolved.ok:
        why = f"not tried: {host} does not resolve on this host"
        return [resolved, Check("smarthost_smtp", False, why, {"host": host, "port": port}),
                Check("smarthost_tls", None, why)]
    mode = str(tls.get("mode")) if tls and tls.get("mode") else None
    ca_file = str(tls.get("ca_file")) if tls and tls.get("ca_file") else None
    bundle = read_ca_bundle(executor, ca_file, profile.ca_bundle)
    probe = probe_smtp(executor, host, port, timeout_s, helo, bundle=bundle)
    if probe.tls is None:
        tls_check_ = Check("smarthost_tls", None, "not tried: the relay did not answer EHLO "
                           "(see smarthost_smtp)", {"mode": mode})
    else:
        tls_check_ = tls_check(probe.tls, probe.where, mode)
    return [resolved, probe.check, tls_check_]


def run_checks(executor: Executor, profile: HostProfile, *, smarthost_host: str | None,
               smarthost_port: int, domain: str | None, public_ip: str | None,
               config_check: Check | None, resolver: TxtAResolver | None = None,
               timeout_s: float = 10.0, ehlo_name: str | None = None,
               tls: Mapping[str, Any] | None = None) -> list[Check]:
    """All checks in the seed story's order (config_check is left out when None).

    ``ehlo_name`` is the name the host's MTA greets relays with (None: the host's own
    name); ``tls`` the smarthost's ``{mode, ca_file}`` when the MTA's configuration says.
    """
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
        checks += [Check("smarthost_resolves", False, NO_SMARTHOST),
                   Check("smarthost_smtp", False, NO_SMARTHOST),
                   Check("smarthost_tls", None, NO_SMARTHOST)]
    else:
        helo = ehlo_name or fqdn or hostname or "localhost.localdomain"
        checks += _smarthost_checks(executor, profile, smarthost_host, smarthost_port,
                                    helo=helo, tls=tls, timeout_s=timeout_s)
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
