"""Inventory service: tenants, sites, hosts and tokens, always seen through a principal.

Another tenant's objects do not exist for a tenant-scoped token: every lookup here filters
by the principal's tenant and answers :class:`NotFound` (404), never 403.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar, cast

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controller.auth import Principal, issue_token
from controller.crypto import SecretBox, new_callback_secret
from controller.db import utcnow
from controller.egress import EgressError, EgressPolicy, EgressRefused, normalise_fingerprint
from controller.errors import Conflict, NotFound, PermissionDenied
from controller.models import AuditEvent, Host, HostTag, Job, JobHost, Site, Tenant, Token
from shared.errors import HostUnreachable, RelayfleetError, ValidationError
from shared.validation import validate_hostname

M = TypeVar("M", Tenant, Site, Host, Token, Job, AuditEvent)


def page(session: Session, query: Any, limit: int, offset: int) -> dict[str, Any]:
    """One page of ``query`` with the total it was cut from."""
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    items = list(session.scalars(query.limit(limit).offset(offset)))
    return {"items": items, "total": total or 0, "limit": limit, "offset": offset}


def scoped(query: Any, model: Any, who: Principal) -> Any:
    """``query`` cut down to what the principal sees: its tenant (every tenant for
    MSP-wide tokens) and, of hosts, those not deleted (a deleted host stays only for the
    results past jobs keep of it)."""
    return query.where(*scope_conditions(model, model, who.tenant_id))


def scope_conditions(model: Any, columns: Any, tenant_id: Any) -> list[Any]:
    """The conditions :func:`scoped` puts on ``model``'s rows, on ``columns`` (the model
    itself, or its table's ``.c`` in a Core statement); ``tenant_id``: the principal's
    tenant (a value or a bound parameter), ``None`` for an MSP-wide principal."""
    conditions = [columns.deleted_at.is_(None)] if model is Host else []
    if tenant_id is not None:
        conditions.append((columns.id if model is Tenant else columns.tenant_id) == tenant_id)
    return conditions


def filtered(query: Any, model: Any, filters: dict[str, Any], *keys: str) -> Any:
    """``query`` restricted to rows whose ``keys`` columns equal the given filter values."""
    for key in keys:
        if filters.get(key) is not None:
            query = query.where(getattr(model, key) == filters[key])
    return query


def get_scoped(session: Session, model: type[M], object_id: int, who: Principal) -> M:
    """The object, or 404 when it does not exist for this principal."""
    row = session.scalar(scoped(select(model).where(model.id == object_id), model, who))
    if row is None:
        raise NotFound(f"{model.__tablename__[:-1]} {object_id} not found")
    return cast(M, row)


def commit_unique(session: Session, what: str) -> None:
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(f"{what} already exists: names must be unique") from exc


# -- tenants ---------------------------------------------------------------------------

def new_tenant(name: str, box: SecretBox) -> tuple[Tenant, str]:
    """A tenant row with a callback signing key of its own, and that key (to show once)."""
    secret = new_callback_secret()
    return Tenant(name=name, callback_key_sealed=box.seal(secret)), secret


def create_tenant(session: Session, who: Principal, name: str,
                  box: SecretBox) -> tuple[Tenant, str]:
    """Add a customer (MSP-wide admins only); also answer its callback secret."""
    who.require("admin")
    if who.tenant_id is not None:
        raise PermissionDenied("a tenant-scoped token cannot create tenants")
    tenant, secret = new_tenant(name, box)
    session.add(tenant)
    commit_unique(session, f"tenant {name!r}")
    return tenant, secret


def rotate_callback_secret(session: Session, who: Principal, tenant_id: int,
                           box: SecretBox) -> str:
    """Give a tenant a new callback signing key and answer it (MSP-wide admins only: a
    tenant's admin could otherwise take its callbacks' key from the MSP's ticketing)."""
    who.require("admin")
    if who.tenant_id is not None:
        raise PermissionDenied("only an MSP-wide admin token can rotate a tenant's "
                               "callback secret")
    tenant = get_scoped(session, Tenant, tenant_id, who)
    secret = new_callback_secret()
    tenant.callback_key_sealed = box.seal(secret)
    session.commit()
    return secret


def tenant_callback_key(session: Session, box: SecretBox, tenant_id: int) -> bytes | None:
    """The key a tenant's callbacks are signed with (``None``: no such tenant).

    Tenants made before keys were per tenant get one here, at their first callback: it was
    never shown, so an MSP-wide admin rotates it to hand it to the tenant. Conditional, so
    that two workers doing this at once end with the same key.
    """
    session.execute(update(Tenant).where(Tenant.id == tenant_id,
                                         Tenant.callback_key_sealed.is_(None))
                    .values(callback_key_sealed=box.seal(new_callback_secret())))
    sealed = session.scalar(select(Tenant.callback_key_sealed).where(Tenant.id == tenant_id))
    secret = box.open(sealed)
    return None if secret is None else secret.encode()


def delete_tenant(session: Session, who: Principal, tenant_id: int) -> None:
    """Remove a customer that has no sites left."""
    who.require("admin")
    tenant = get_scoped(session, Tenant, tenant_id, who)
    if who.tenant_id is not None:
        raise PermissionDenied("a tenant-scoped token cannot delete its tenant")
    if session.scalar(select(func.count()).where(Site.tenant_id == tenant.id)):
        raise Conflict(f"tenant {tenant_id} still has sites: delete them first")
    session.delete(tenant)
    session.commit()


# -- sites -----------------------------------------------------------------------------

def create_site(session: Session, who: Principal, tenant_id: int, name: str) -> Site:
    """Add a site to a tenant the principal sees."""
    who.require("admin")
    if session.scalar(scoped(select(Tenant).where(Tenant.id == tenant_id), Tenant, who)) is None:
        raise ValidationError.for_field("tenant_id", f"no tenant {tenant_id}")
    site = Site(tenant_id=tenant_id, name=name)
    session.add(site)
    commit_unique(session, f"site {name!r}")
    return site


def delete_site(session: Session, who: Principal, site_id: int) -> None:
    """Remove a site that has no hosts left."""
    who.require("admin")
    site = get_scoped(session, Site, site_id, who)
    if session.scalar(select(func.count()).where(Host.site_id == site.id,
                                                 Host.deleted_at.is_(None))):
        raise Conflict(f"site {site_id} still has hosts: delete or move them first")
    # Deleted hosts no job names can go for good; the others hold past jobs' results.
    session.execute(delete(Host).where(Host.site_id == site.id, Host.deleted_at.is_not(None),
                                       Host.id.not_in(select(JobHost.host_id))))
    if session.scalar(select(func.count()).where(Host.site_id == site.id)):
        session.rollback()
        raise Conflict(f"site {site_id} had hosts whose results past jobs keep: it stays, "
                       "so that those results stay readable")
    session.delete(site)
    session.commit()


# -- hosts -----------------------------------------------------------------------------



def _apply_host_fields(host: Host, data: dict[str, Any], box: SecretBox,
                       who_tenant: int | None = None) -> None:
    """Copy validated fields onto a host row, sealing secrets on the way."""
    if "mta" in data or any(key in data and data[key] != getattr(host, key)
                            for key in ("address", "transport")):
        # What the host was found running may not hold for what it is told now: an SSH run
        # of an "auto" host detects again (sending mta again is how to ask for that).
        host.mta_detected_kind = None
    for key in ("name", "address", "transport"):
        if key in data:
            setattr(host, key, data[key])
    if data.get("agent") is not None:
        agent = data["agent"]
        url = agent["url"].rstrip("/")
        if not agent.get("token") and host.agent_url not in (None, url):
            # The stored token must never be sent somewhere new without its owner saying so.
            raise ValidationError.for_field("agent.token", "give the agent's token again when "
                                                           "its URL changes")
        host.agent_url = url
        if "ca_cert" in agent:
            host.agent_ca_cert = agent["ca_cert"]
        if "tls_fingerprint" in agent:
            pin = agent["tls_fingerprint"]
            host.agent_tls_fingerprint = normalise_fingerprint(pin) if pin else None
        if "insecure_http" in agent:
            host.agent_insecure_http = bool(agent["insecure_http"])
        if agent.get("token"):
            host.agent_token_sealed = box.seal(agent["token"])
    if data.get("ssh") is not None:
        ssh = data["ssh"]
        host.ssh_port = ssh.get("port", 22)
        host.ssh_username = ssh["username"]
        host.ssh_host_key = " ".join(ssh["host_key"].split()[:2])
        host.ssh_sudo = ssh.get("sudo", False)
        host.ssh_private_key_sealed = box.seal(ssh.get("private_key"))
        host.ssh_passphrase_sealed = box.seal(ssh.get("passphrase"))
        host.ssh_password_sealed = box.seal(ssh.get("password"))
    if "mta" in data:
        mta = data["mta"]
        overrides = mta.get("overrides") or {}
        # Every override is root-level power: programs run as root, and paths root reads,
        # writes and compiles (an mc pointed at authinfo ran a password through m4). A
        # tenant admin may send back what an MSP-wide admin set, but not set anything.
        if who_tenant is not None and overrides and overrides != (host.mta_overrides or {}):
            raise PermissionDenied(
                f"mta.overrides ({', '.join(sorted(overrides))}) name programs and files the "
                "host runs, reads and writes as root; an MSP-wide admin must set them")
        host.mta_kind = mta.get("kind", "sendmail")
        host.mta_flavour = mta.get("flavour", "debian")
        host.mta_overrides = overrides
    if "tags" in data:
        host.tag_rows = [HostTag(tag=tag) for tag in sorted(set(data["tags"]))]
    if host.transport == "agent" and (not host.agent_url or not host.agent_token_sealed):
        raise ValidationError.for_field("agent", "the agent transport needs agent.url and "
                                                 "agent.token")
    if host.transport == "ssh" and not host.ssh_username:
        raise ValidationError.for_field("ssh", "the ssh transport needs ssh settings")


def _visible_sites(session: Session, who: Principal, site_ids: Iterable[int]) -> dict[int, Site]:
    wanted = set(site_ids)
    rows = session.scalars(scoped(select(Site).where(Site.id.in_(wanted)), Site, who))
    return {site.id: site for site in rows}


def create_hosts(session: Session, who: Principal, rows: Sequence[dict[str, Any] | None],
                 box: SecretBox, *, field_prefix: str = "",
                 errors: dict[str, list[str]] | None = None) -> list[Host]:
    """Create hosts (one, or an import); all or none. Errors name the row and field;
    ``None`` rows already failed their grammar (their reasons are in ``errors``)."""
    who.require("admin")
    sites = _visible_sites(session, who, (row["site_id"] for row in rows if row))
    errors = dict(errors or {})
    seen: set[tuple[int, str]] = set()
    hosts = []
    for index, row in enumerate(rows):
        if row is None:
            continue
        where = field_prefix.format(index=index)
        site = sites.get(row["site_id"])
        if site is None:
            errors[f"{where}site_id"] = [f"no site {row['site_id']}"]
            continue
        if (site.id, row["name"]) in seen:
            errors[f"{where}name"] = [f"{row['name']!r} appears twice for site {site.id}"]
            continue
        seen.add((site.id, row["name"]))
        host = Host(site_id=site.id, tenant_id=site.tenant_id)
        try:
            _apply_host_fields(host, row, box, who.tenant_id)
        except ValidationError as exc:
            for key, reasons in exc.errors.items():
                errors[f"{where}{key}"] = reasons
            continue
        hosts.append(host)
    if errors:
        raise ValidationError("some hosts are invalid; nothing was created", errors)
    session.add_all(hosts)
    commit_unique(session, "a host with that name in that site")
    return hosts


def update_host(session: Session, who: Principal, host_id: int, data: dict[str, Any],
                box: SecretBox) -> Host:
    """Change a host; moving it to another site moves it to that site's tenant."""
    who.require("admin")
    host = get_scoped(session, Host, host_id, who)
    if "site_id" in data:
        site = _visible_sites(session, who, [data["site_id"]]).get(data["site_id"])
        if site is None:
            raise ValidationError.for_field("site_id", f"no site {data['site_id']}")
        moved_tenant = site.tenant_id != host.tenant_id
        host.site_id, host.tenant_id = site.id, site.tenant_id
    _apply_host_fields(host, data, box, who.tenant_id)
    if "site_id" in data:
        from controller import policy

        try:
            session.flush()
        except IntegrityError as exc:
            session.rollback()
            raise Conflict(f"host {host.name!r} already exists: names must be unique") from exc
        # its new site's (and tenant's) policy applies; its own policy named its old
        # tenant's credential: it goes when the tenant changes
        policy.host_moved(session, host.id, new_tenant=moved_tenant)
    commit_unique(session, f"host {host.name!r}")
    return host


def delete_host(session: Session, who: Principal, host_id: int) -> None:
    """Remove a host from the inventory, targets and the fleet; past jobs keep its
    results, and a new host may take its name."""
    who.require("admin")
    get_scoped(session, Host, host_id, who).deleted_at = utcnow()
    session.commit()


def host_query(who: Principal, filters: dict[str, Any]) -> Any:
    """Hosts the principal sees, filtered as ``GET /v1/hosts`` asks (and the fleet's
    views: ``holding_mail``, ``out_of_sync``)."""
    query = filtered(scoped(select(Host), Host, who).order_by(Host.id), Host, filters,
                     "tenant_id", "site_id", "transport")
    if filters.get("tag"):
        query = query.where(Host.id.in_(select(HostTag.host_id).where(
            HostTag.tag == filters["tag"])))
    if filters.get("name"):
        query = query.where(Host.name.contains(filters["name"], autoescape=True))
    if filters.get("holding_mail") is not None:
        query = query.where(Host.queue_count > 0 if filters["holding_mail"]
                            else func.coalesce(Host.queue_count, 0) == 0)
    if filters.get("out_of_sync") is not None:
        # out of sync is what fleet_summary counts: known to differ (never seen is not)
        query = query.where(Host.config_in_sync.is_(False) if filters["out_of_sync"]
                            else func.coalesce(Host.config_in_sync, True).is_(True))
    if filters.get("drifted") is not None:
        from controller.policy import drifted_clause

        # drifted: the drift list is not empty (null, no policy or never seen, is not)
        query = query.where(drifted_clause() if filters["drifted"] else ~drifted_clause())
    return query


def fleet_summary(session: Session, who: Principal) -> dict[str, int]:
    """Counts over every host the principal sees."""
    base = scoped(select(Host), Host, who).subquery()
    row = session.execute(select(
        func.count(),
        func.count().filter(base.c.last_seen_at.is_(None)),
        func.count().filter(base.c.last_reachable.is_(False)),
        func.count().filter(base.c.queue_count > 0),
        func.coalesce(func.sum(base.c.queue_count), 0),
        func.count().filter(base.c.last_seen_at.is_not(None), base.c.smarthost.is_(None)),
        func.count().filter(base.c.config_in_sync.is_(False)),
    )).one()
    keys = ("hosts", "never_seen", "unreachable", "holding_mail", "queued_messages",
            "without_smarthost", "out_of_sync")
    return {key: int(value or 0) for key, value in zip(keys, row, strict=True)}


# -- SSH host keys ---------------------------------------------------------------------

#: how long asking a host for its SSH key may take, every address tried
SCAN_TIMEOUT_S = 10.0


def _fingerprint_of(line: str | None) -> str | None:
    """The SHA256 fingerprint of a stored host key line (``None``: none, or unreadable)."""
    from shared.ssh import fingerprint, parse_public_key

    if not line:
        return None
    try:
        return fingerprint(parse_public_key(line))
    except RelayfleetError:
        return None


def pin_ssh_host_key(session: Session, who: Principal, host_id: int,
                     host_key: str) -> tuple[Host, str | None, str]:
    """Pin a new host key on an SSH host, keeping its login as it is (a reinstalled host);
    answer the host and its old and new key fingerprints."""
    from shared.ssh import fingerprint, parse_public_key

    who.require("admin")
    host = get_scoped(session, Host, host_id, who)
    if host.transport != "ssh" or not host.ssh_username:
        raise ValidationError(f"host {host_id} uses the {host.transport} transport: only an "
                              "SSH host has a host key to pin")
    line = " ".join(host_key.split()[:2])
    new = fingerprint(parse_public_key(line))
    old = _fingerprint_of(host.ssh_host_key)
    if line != host.ssh_host_key:
        host.ssh_host_key = line
        # A reinstalled host may run another MTA: an "auto" host is detected again.
        host.mta_detected_kind = None
    session.commit()
    return host, old, new


def _scan_failure(cause: BaseException | None) -> str:
    """Why no key was read, in words that say what to look at (no socket detail beyond
    what an SSH login's own error would show)."""
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused: nothing listens on that port"
    if isinstance(cause, TimeoutError):
        return "timed out"
    if isinstance(cause, OSError):
        return cause.strerror or "cannot connect"
    return "what answers there did not complete an SSH handshake in time (is it sshd?)"


def scan_ssh_host_key(policy: EgressPolicy, address: str, port: int,
                      timeout_s: float = SCAN_TIMEOUT_S) -> tuple[str, str]:
    """The key the sshd at ``address``:``port`` offers, asked by the controller itself:
    (``TYPE BASE64`` line, ``SHA256:...`` fingerprint).

    The address must pass the egress policy (:class:`ValidationError` otherwise); a name
    is resolved once and the addresses checked are the ones dialled. Nothing answering
    SSH there is :class:`HostUnreachable`.
    """
    from shared.ssh import fetch_host_key

    normal = validate_hostname(address, "address")
    host = normal
    if normal.startswith("["):
        host = normal[1:-1]
        host = host[5:] if host[:5].lower() == "ipv6:" else host
    where = f"[{address}]:{port}" if ":" in address and "[" not in address \
        else f"{address}:{port}"
    allowed = "; RELAYFLEET_EGRESS_ALLOW on the controller says where it may connect"
    why = policy.check_literal("ssh://" + (f"[{host}]" if ":" in host else host))
    if why is not None:
        what = why if "RELAYFLEET_EGRESS_ALLOW" in why else f"a {why} address"
        raise ValidationError.for_field(
            "address", f"refused by the controller's egress policy ({what}){allowed}")
    try:
        addresses = policy.resolve(host, port)
    except EgressRefused:
        raise ValidationError.for_field(
            "address", "refused by the controller's egress policy (the name resolves to an "
                       f"address it refuses){allowed}") from None
    except EgressError:
        raise HostUnreachable(f"{where}: the name does not resolve: check the address and "
                              "the controller's DNS") from None
    deadline = time.monotonic() + timeout_s
    failure = "timed out"
    for ip in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            # Connect and handshake get half of what is left each: the whole scan stays
            # within its time box however many addresses the name has.
            return fetch_host_key(str(ip), port, timeout_s=remaining / 2)
        except HostUnreachable as exc:
            failure = _scan_failure(exc.__cause__)
    raise HostUnreachable(f"{where}: no SSH host key could be read ({failure}): check the "
                          "address and port, that sshd runs on the host, and that no "
                          "firewall keeps the controller from reaching it")


# -- tokens ----------------------------------------------------------------------------

class IssuedToken:
    """A token just made, with its secret: what ``POST /v1/tokens`` answers (the only
    answer that shows the secret). Every other attribute is the row's."""

    def __init__(self, row: Token, secret: str) -> None:
        self.row = row
        self.token = secret

    def __getattr__(self, name: str) -> Any:
        # only reached for names not set in __init__ (the row's columns); "row" itself is
        # refused so that a half-built object (copy, pickle) cannot recurse
        if name == "row":
            raise AttributeError(name)
        return getattr(self.row, name)


def create_token(session: Session, who: Principal, *, name: str, role: str,
                 tenant_id: int | None) -> tuple[Token, str]:
    """Issue a token no stronger and no wider than the principal's own."""
    who.require("admin")
    if who.tenant_id is not None:
        if tenant_id not in (None, who.tenant_id):
            raise ValidationError.for_field("tenant_id", f"no tenant {tenant_id}")
        tenant_id = who.tenant_id
    elif tenant_id is not None and session.get(Tenant, tenant_id) is None:
        raise ValidationError.for_field("tenant_id", f"no tenant {tenant_id}")
    row, text = issue_token(session, name=name, role=role, tenant_id=tenant_id,
                            created_by=who.token_id)
    session.commit()
    return row, text


def revoke_token(session: Session, who: Principal, token_id: int) -> Token:
    """Revoke a token (it stays listed, marked revoked)."""
    who.require("admin")
    row = get_scoped(session, Token, token_id, who)
    if row.id == who.token_id:
        raise Conflict("a token cannot revoke itself (that would lock its holder out): "
                       "revoke it with another admin token")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.commit()
    return row
