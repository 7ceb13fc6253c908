"""Desired state per tenant, site and host; drift; remediation.

A :class:`~controller.models.Policy` row holds what one level (``tenant:ID``, ``site:ID``,
``host:ID``) says; its ``settings`` JSON holds only the keys that level sets:

- ``smarthost``: ``None`` (the host must deliver directly: no smarthost) or an object
  with any of ``host``, ``port``, ``mx``, ``tls``, ``masquerade``;
- ``credential``: ``None`` (no SMTP AUTH) or the id of a :class:`Credential` (also kept
  in ``Policy.credential_id``, so a credential in use cannot be deleted).

A host inherits host > site > tenant, field by field: each field comes from the most
specific level that sets it. A level that says ``smarthost: null`` ends the smarthost
fields there: what more specific levels set still wins, what less specific ones set is
not looked at. ``auto_remediate`` inherits the same way; ``remediate_per_hour`` is a
tenant's budget and is set on the tenant only.

Drift compares a host's effective policy with its last known state (``Host.smarthost``,
``Host.config_in_sync``; masquerade only when a level sets it; ``auth.password`` when the
credential changed after the host's last successful set_smarthost was made) and is stored
in ``Host.drift``: ``[{field, want, have}]``, ``[]`` in line, NULL when no complete policy
applies or the host was never seen.

Automatic remediation backs off: a host whose drift is the same after its last two
automatic remediations (:class:`~controller.models.HostRemediation`) is "stuck" and left
alone until its drift changes or an operator remediates it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from marshmallow import ValidationError as SchemaError
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from controller import jobs as job_svc
from controller.auth import Principal, system_principal
from controller.config import Settings
from controller.crypto import SecretBox
from controller.db import Database, utcnow
from controller.errors import Conflict, NotFound
from controller.inventory import commit_unique, get_scoped, scoped
from controller.ledger import FINISHED_UNIT_STATES, JobOrigin, OriginKind, UnitState
from controller.models import (
    Credential,
    Host,
    HostRemediation,
    Job,
    JobHost,
    Policy,
    Site,
    Tenant,
)
from shared.actions import CHANGE_ACTIONS
from shared.errors import ValidationError
from shared.validation import parse_smarthost_request, refusal

log = logging.getLogger("relayfleet.policy")

#: the smarthost fields a policy level may set
SMARTHOST_FIELDS = ("host", "port", "mx", "tls", "masquerade")
#: automatic remediations per tenant and hour when the tenant's policy does not say
DEFAULT_REMEDIATE_PER_HOUR = 20
#: a host remediated this recently is left alone by the automatic remediation
REMEDIATE_QUIET_S = 15 * 60
#: the name automatic remediations run as (no token: the controller itself)
REMEDIATION_PRINCIPAL = "policy remediation"
#: automatic remediations in a row that met the same drift before the host is left alone
REMEDIATE_TRIES = 2
#: the actions whose outcome can change what drift compares (smarthost, config_in_sync)
DRIFT_ACTIONS = frozenset((*CHANGE_ACTIONS, "collect_status", "read_smarthost"))
#: ids per IN list (SQLite's and PostgreSQL's parameter limits are far above)
CHUNK = 500
#: what an ``auth.password`` drift says (never the password)
STALE_LOGIN_NOTE = "changed since the host got it"


# -- credentials ------------------------------------------------------------------------

def credential_doc(row: Credential) -> dict[str, Any]:
    """What the API shows of a credential (never its password)."""
    return {"id": row.id, "tenant_id": row.tenant_id, "name": row.name,
            "username": row.username, "created_at": row.created_at,
            "updated_at": row.updated_at}


def _tenant_for(session: Session, who: Principal, tenant_id: int | None) -> int:
    """The tenant a new object belongs to: the token's own, or the one an MSP-wide token
    names (and sees)."""
    if who.tenant_id is not None:
        if tenant_id not in (None, who.tenant_id):
            raise ValidationError.for_field("tenant_id", f"no tenant {tenant_id}")
        return who.tenant_id
    if tenant_id is None:
        raise ValidationError.for_field("tenant_id", "an MSP-wide token must say which "
                                                     "tenant the credential belongs to")
    if session.get(Tenant, tenant_id) is None:
        raise ValidationError.for_field("tenant_id", f"no tenant {tenant_id}")
    return tenant_id


def create_credential(session: Session, who: Principal, box: SecretBox, *,
                      tenant_id: int | None, name: str, username: str,
                      password: str) -> Credential:
    """Store a relay login for a tenant (admins); the password is sealed."""
    who.require("admin")
    owner = _tenant_for(session, who, tenant_id)
    what = (f"credential {name!r} of tenant {owner} (pick another name, or change that one "
            "with PATCH)")
    if session.scalar(select(Credential.id).where(Credential.tenant_id == owner,
                                                  Credential.name == name)) is not None:
        raise Conflict(f"{what} already exists")
    row = Credential(tenant_id=owner, name=name, username=username,
                     password_sealed=str(box.seal(password)))
    session.add(row)
    # a concurrent create of the same name is caught by the unique constraint: 409
    commit_unique(session, what)
    return row


def update_credential(session: Session, who: Principal, box: SecretBox, credential_id: int,
                      changes: Mapping[str, Any]) -> Credential:
    """Change a credential's user name or password (admins); the hosts whose policy uses
    it are checked for drift again."""
    who.require("admin")
    row = get_credential(session, who, credential_id)
    if "username" in changes:
        row.username = changes["username"]
    if "password" in changes:
        row.password_sealed = str(box.seal(changes["password"]))
    row.updated_at = utcnow()
    session.flush()
    users = session.scalars(select(Policy).where(Policy.credential_id == row.id)).all()
    refresh_drift(session, _hosts_under(session, users))
    session.commit()
    return row


def delete_credential(session: Session, who: Principal, credential_id: int) -> None:
    """Remove a credential no policy uses (admins)."""
    who.require("admin")
    row = get_credential(session, who, credential_id)
    users = list(session.scalars(select(Policy.scope).where(Policy.credential_id == row.id)))
    if users:
        raise Conflict(f"credential {row.name!r} is used by the policy of "
                       f"{', '.join(sorted(users))}: change or clear those policies first")
    name = row.name
    session.delete(row)
    try:
        session.commit()
    except IntegrityError:
        # a policy started using it meanwhile (the foreign key refuses the delete)
        session.rollback()
        raise Conflict(f"credential {name!r} was just put in use by a policy: change or "
                       "clear that policy first (GET /v1/policies)") from None


def get_credential(session: Session, who: Principal, credential_id: int) -> Credential:
    """A credential the principal sees (404 otherwise)."""
    row: Credential | None = session.scalar(scoped(
        select(Credential).where(Credential.id == credential_id), Credential, who))
    if row is None:
        raise NotFound(f"credential {credential_id} not found")
    return row


def list_credentials(session: Session, who: Principal,
                     tenant_id: int | None = None) -> list[Credential]:
    """The credentials the principal sees (one tenant's when asked)."""
    query = scoped(select(Credential), Credential, who).order_by(Credential.tenant_id,
                                                                  Credential.name)
    if tenant_id is not None:
        query = query.where(Credential.tenant_id == tenant_id)
    return list(session.scalars(query))


def find_credential(session: Session, tenant_id: int, name: str) -> Credential:
    """A tenant's credential by name (422 naming the field when there is none)."""
    row = session.scalar(select(Credential).where(Credential.tenant_id == tenant_id,
                                                  Credential.name == name))
    if row is None:
        raise ValidationError.for_field(
            "credential", f"tenant {tenant_id} has no credential {name!r}: add it with "
                          "POST /v1/credentials (relayfleet credentials add) first")
    return row


# -- policies ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Level:
    """One level a policy can be set at: its kind, object id and tenant."""

    kind: str
    object_id: int
    tenant_id: int

    @property
    def scope(self) -> str:
        """``tenant:ID``, ``site:ID`` or ``host:ID``."""
        return f"{self.kind}:{self.object_id}"


def level_of(session: Session, who: Principal, kind: str, object_id: int) -> Level:
    """The level a tenant, site or host id names (404 when the principal does not see it)."""
    if kind == "tenant":
        tenant = get_scoped(session, Tenant, object_id, who)
        return Level("tenant", tenant.id, tenant.id)
    if kind == "site":
        site = get_scoped(session, Site, object_id, who)
        return Level("site", site.id, site.tenant_id)
    host = get_scoped(session, Host, object_id, who)
    return Level("host", host.id, host.tenant_id)


def _check_smarthost_part(part: Mapping[str, Any], with_auth: bool | None) -> None:
    """Check what one level sets with the agent's own smarthost rules: the fields it
    gives, completed with placeholders for those it leaves to other levels."""
    candidate: dict[str, Any] = {"host": "placeholder.invalid", **part}
    if with_auth and (part.get("tls") or {}).get("mode") is not None:
        # a credential with an explicit mode: the rule "no AUTH in clear" applies here
        candidate["auth"] = {"username": "placeholder", "password": "placeholder"}
    try:
        parse_smarthost_request(candidate)
    except ValidationError as exc:
        raise refusal("policy", {f"smarthost.{key}": reasons
                                 for key, reasons in exc.errors.items()}) from None


def put_policy(session: Session, who: Principal, level: Level,
               body: Mapping[str, Any]) -> Policy:
    """Set (replace) the policy of one level (admins); answer the row. Hosts under it are
    checked for drift again in the same transaction."""
    who.require("admin")
    settings: dict[str, Any] = {}
    credential_id: int | None = None
    if "smarthost" in body:
        part = body["smarthost"]
        if part is not None:
            part = {key: value for key, value in part.items() if value is not None}
            tls = {key: value for key, value in (part.get("tls") or {}).items()
                   if value is not None}
            part.pop("tls", None)
            if tls:
                part["tls"] = tls
            _check_smarthost_part(part, body.get("credential") is not None)
        settings["smarthost"] = part
    if "credential" in body:
        if body["credential"] is None:
            settings["credential"] = None
        else:
            credential = find_credential(session, level.tenant_id, body["credential"])
            credential_id = credential.id
            settings["credential"] = credential.id
    if body.get("remediate_per_hour") is not None and level.kind != "tenant":
        raise ValidationError.for_field(
            "remediate_per_hour", "is a tenant's budget of automatic remediations per hour: "
                                  "set it on the tenant's policy")
    samples = _sample_hosts(session, level)
    before = {host_id: effective.problem
              for host_id, effective in effective_policies(session, samples).items()}
    row = session.scalar(select(Policy).where(Policy.scope == level.scope))
    if row is None:
        row = Policy(scope=level.scope,
                     site_id=level.object_id if level.kind == "site" else None,
                     host_id=level.object_id if level.kind == "host" else None)
        session.add(row)
    else:
        row.updated_at = utcnow()
    # the level's tenant now: a host moved to another tenant takes its policy's tenant along
    row.tenant_id = level.tenant_id
    row.settings = settings
    row.credential_id = credential_id
    row.auto_remediate = body.get("auto_remediate")
    row.remediate_per_hour = body.get("remediate_per_hour")
    raced = (f"the policy of {level.kind} {level.object_id} was set by another request at "
             "the same time: read it (GET) and try again")
    # another request may set this level's first policy at the same moment
    _flush_or_conflict(session, raced)
    problem = _level_problem(session, level, samples, before)
    if problem is not None:
        session.rollback()
        raise problem
    refresh_drift(session, _hosts_under(session, [row]))
    _flush_or_conflict(session, raced, commit=True)
    return row


def _flush_or_conflict(session: Session, message: str, *, commit: bool = False) -> None:
    """Flush (or commit); a unique or foreign key refusal a concurrent request caused is
    a 409 saying ``message``."""
    try:
        session.commit() if commit else session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(message) from None


def _sample_hosts(session: Session, level: Level) -> list[int]:
    """The hosts whose effective policy tells whether a level's policy can be applied:
    the host itself; for a site or tenant, one host of each of its sites (hosts of a site
    without their own policy all get the same) and every host under it with its own."""
    if level.kind == "host":
        return [level.object_id]
    column = Host.tenant_id if level.kind == "tenant" else Host.site_id
    live = (column == level.object_id, Host.deleted_at.is_(None))
    ids = set(session.scalars(select(func.min(Host.id)).where(*live).group_by(Host.site_id)))
    ids.update(session.scalars(select(Host.id).join(Policy, Policy.host_id == Host.id)
                               .where(*live)))
    return sorted(ids)


def _level_problem(session: Session, level: Level, samples: Sequence[int],
                   before: Mapping[int, str | None]) -> ValidationError | None:
    """Why the policy just set cannot be applied to one of the level's hosts (its levels
    combined), or None. A problem a host had before this change is not this change's: it
    does not block it."""
    after = effective_policies(session, samples)
    for host_id in samples:
        effective = after.get(host_id)
        if effective is None or effective.problem is None \
                or before.get(host_id) == effective.problem:
            continue
        name = session.scalar(select(Host.name).where(Host.id == host_id))
        where = {"host": "with its site's and tenant's policies",
                 "site": "with its tenant's policy and its own",
                 "tenant": "with its site's policy and its own"}[level.kind]
        return ValidationError.for_field(
            "policy", f"this policy cannot be applied: for host {name!r} ({where}), the "
                      f"policy {effective.problem}")
    return None


def delete_policy(session: Session, who: Principal, level: Level) -> None:
    """Remove one level's policy (admins); its hosts inherit from the levels above."""
    who.require("admin")
    row = session.scalar(select(Policy).where(Policy.scope == level.scope))
    if row is None:
        raise NotFound(f"{level.kind} {level.object_id} has no policy of its own")
    hosts = _hosts_under(session, [row])
    session.delete(row)
    session.flush()
    refresh_drift(session, hosts)
    session.commit()


def host_moved(session: Session, host_id: int, *, new_tenant: bool) -> None:
    """A host moved to another site (in the caller's transaction): when that site is
    another tenant's, the host's own policy (its old tenant's, credential included) is
    removed; its drift is computed again against what it inherits now."""
    if new_tenant:
        session.execute(delete(Policy).where(Policy.host_id == host_id))
        session.execute(delete(HostRemediation).where(HostRemediation.host_id == host_id))
    refresh_drift(session, [host_id])


def get_policy(session: Session, level: Level) -> Policy:
    """One level's own policy (404 when it has none)."""
    row = session.scalar(select(Policy).where(Policy.scope == level.scope))
    if row is None:
        raise NotFound(f"{level.kind} {level.object_id} has no policy of its own: its hosts "
                       "inherit from the levels above (GET /v1/hosts/{id}/desired)")
    return row


def policy_doc(session: Session, row: Policy) -> dict[str, Any]:
    """A policy as the API shows it: the level, what it sets (credential by name)."""
    kind, _, object_id = row.scope.partition(":")
    doc: dict[str, Any] = {"scope": row.scope, "level": kind, "object_id": int(object_id),
                           "tenant_id": row.tenant_id,
                           "auto_remediate": row.auto_remediate,
                           "remediate_per_hour": row.remediate_per_hour,
                           "created_at": row.created_at, "updated_at": row.updated_at}
    settings = row.settings or {}
    if "smarthost" in settings:
        doc["smarthost"] = settings["smarthost"]
    if "credential" in settings:
        credential = session.get(Credential, row.credential_id) \
            if row.credential_id is not None else None
        doc["credential"] = credential.name if credential is not None else None
    return doc


def list_policies(session: Session, who: Principal,
                  tenant_id: int | None = None) -> list[Policy]:
    """Every policy the principal sees (one tenant's when asked), tenants first."""
    query = scoped(select(Policy), Policy, who)
    if tenant_id is not None:
        query = query.where(Policy.tenant_id == tenant_id)
    rows = list(session.scalars(query.order_by(Policy.tenant_id, Policy.id)))
    order = {"tenant": 0, "site": 1, "host": 2}
    return sorted(rows, key=lambda row: (row.tenant_id, order[row.scope.split(":")[0]],
                                         row.id))


def _hosts_under(session: Session, rows: Iterable[Policy]) -> list[int]:
    """The live hosts whose effective policy the given policies take part in."""
    ids: set[int] = set()
    for row in rows:
        kind, _, raw = row.scope.partition(":")
        column = {"tenant": Host.tenant_id, "site": Host.site_id, "host": Host.id}[kind]
        ids.update(session.scalars(select(Host.id).where(column == int(raw),
                                                         Host.deleted_at.is_(None))))
    return sorted(ids)


# -- effective policy -------------------------------------------------------------------

@dataclass
class Effective:
    """A host's desired state, the levels combined, and where each field came from."""

    host_id: int
    tenant_id: int
    #: a level says anything about the smarthost (else there is no desired smarthost)
    defined: bool = False
    #: None with ``defined``: the host must have no smarthost
    smarthost: dict[str, Any] | None = None
    credential_id: int | None = None
    credential_name: str | None = None
    credential_username: str | None = None
    auto_remediate: bool = False
    remediate_per_hour: int = DEFAULT_REMEDIATE_PER_HOUR
    sources: dict[str, str] = field(default_factory=dict)
    #: why the combined fields do not make a smarthost the agent would accept
    problem: str | None = None

    @property
    def complete(self) -> bool:
        """The policy says what the host's relay must be, and says it validly."""
        return self.defined and self.problem is None

    def key(self) -> str:
        """What hosts with the same desired state share (one remediation job each)."""
        return json.dumps({"smarthost": self.smarthost if self.defined else "-",
                           "credential": self.credential_id}, sort_keys=True)

    def doc(self) -> dict[str, Any]:
        """The effective policy as ``GET /v1/hosts/{id}/desired`` shows it."""
        return {"host_id": self.host_id, "defined": self.defined,
                "complete": self.complete, "problem": self.problem,
                "smarthost": self.smarthost if self.defined else None,
                "credential": self.credential_name,
                "username": self.credential_username,
                "auto_remediate": self.auto_remediate,
                "remediate_per_hour": self.remediate_per_hour,
                "sources": dict(self.sources)}


def combine(host_id: int, tenant_id: int, levels: Sequence[tuple[str, Policy | None]],
            credentials: Mapping[int, Credential]) -> Effective:
    """The effective policy of one host from its levels, most specific first
    (``[("host:3", row), ("site:2", row), ("tenant:1", row)]``; None: no policy there)."""
    result = Effective(host_id, tenant_id)
    found: dict[str, Any] = {}
    smarthost_closed = False
    foreign: str | None = None
    for scope, row in levels:
        if row is None:
            continue
        settings = row.settings or {}
        if "smarthost" in settings and not smarthost_closed:
            part = settings["smarthost"]
            if part is None:
                if not found:
                    result.defined = True
                    result.sources["smarthost"] = scope
                # nothing above a "no smarthost" level is looked at
                smarthost_closed = True
            else:
                for name in SMARTHOST_FIELDS:
                    if name in part and name not in found:
                        found[name] = part[name]
                        result.sources[f"smarthost.{name}"] = scope
        if "credential" in settings and "credential" not in result.sources:
            result.sources["credential"] = scope
            credential = credentials.get(row.credential_id) \
                if row.credential_id is not None else None
            if credential is not None and credential.tenant_id != tenant_id:
                # a policy left behind when its host moved to another tenant: never use
                # another tenant's login
                foreign = credential.name
            elif credential is not None:
                result.credential_id = credential.id
                result.credential_name = credential.name
                result.credential_username = credential.username
        if row.auto_remediate is not None and "auto_remediate" not in result.sources:
            result.auto_remediate = row.auto_remediate
            result.sources["auto_remediate"] = scope
        if row.remediate_per_hour is not None and scope.startswith("tenant:"):
            result.remediate_per_hour = row.remediate_per_hour
            result.sources["remediate_per_hour"] = scope
    if found and "smarthost" not in result.sources:
        result.defined = True
        if "host" not in found:
            result.problem = ("sets smarthost fields but no level names the smarthost's host: "
                              "set smarthost.host on this host, its site or its tenant")
            result.smarthost = found
            return result
        result.smarthost = _normalised(found, result)
    if foreign is not None:
        result.problem = (f"names credential {foreign!r} of another tenant: set one of the "
                          "host's own tenant's credentials (or none) in its policy")
    return result


def _normalised(found: Mapping[str, Any], result: Effective) -> dict[str, Any] | None:
    """The combined smarthost fields, checked and normalised by the agent's own rules
    (None when they do not pass: ``result.problem`` says why)."""
    candidate = dict(found)
    if result.credential_id is not None:
        candidate["auth"] = {"username": result.credential_username or "x",
                             "password": "placeholder"}
    try:
        request = parse_smarthost_request(candidate)
    except ValidationError as exc:
        result.problem = exc.message.replace("invalid smarthost request: ",
                                             "is not a valid smarthost: ")
        return dict(found)
    literal = request.host.startswith("[")
    tls = request.tls_policy
    doc: dict[str, Any] = {"host": request.host, "port": request.port or 25,
                           "mx": request.mx and not literal,
                           "tls": {"mode": tls.mode, "ca_file": tls.ca_file},
                           "masquerade": None}
    if request.masquerade is not None:
        doc["masquerade"] = {"domain": request.masquerade.domain,
                             "envelope": request.masquerade.envelope}
    return doc


def _levels_of(host: Host, policies: Mapping[str, Policy]) -> list[tuple[str, Policy | None]]:
    scopes = (f"host:{host.id}", f"site:{host.site_id}", f"tenant:{host.tenant_id}")
    return [(scope, policies.get(scope)) for scope in scopes]


def _load(session: Session, hosts: Sequence[Host]) -> tuple[dict[str, Policy],
                                                            dict[int, Credential]]:
    """The policies and credentials that the given hosts' levels hold."""
    tenants = sorted({host.tenant_id for host in hosts})
    if not tenants:
        return {}, {}
    # by tenant (a handful of ids): the tenant's and sites' levels, and its hosts' own
    # (only the given hosts' when they are few)
    query = select(Policy).where(Policy.tenant_id.in_(tenants))
    if len(hosts) <= CHUNK:
        query = query.where(Policy.host_id.is_(None)
                            | Policy.host_id.in_([host.id for host in hosts]))
    policies = {row.scope: row for row in session.scalars(query)}
    credential_ids = {row.credential_id for row in policies.values()
                      if row.credential_id is not None}
    credentials = {row.id: row for row in session.scalars(
        select(Credential).where(Credential.id.in_(credential_ids)))} if credential_ids else {}
    return policies, credentials


def effective_policies(session: Session, host_ids: Sequence[int]) -> dict[int, Effective]:
    """Each given host's effective policy, by host id."""
    hosts = _hosts(session, host_ids)
    policies, credentials = _load(session, hosts)
    return {host.id: combine(host.id, host.tenant_id, _levels_of(host, policies), credentials)
            for host in hosts}


def desired(session: Session, who: Principal, host_id: int) -> dict[str, Any]:
    """``GET /v1/hosts/{id}/desired``: the host's effective policy, each field's level, and
    its drift as last computed."""
    host = get_scoped(session, Host, host_id, who)
    effective = effective_policies(session, [host.id])[host.id]
    return {**effective.doc(), "drift": host.drift, "drift_checked_at": host.drift_checked_at,
            "stuck": host.id in stuck_hosts(session, [host.id])}


def _hosts(session: Session, host_ids: Sequence[int]) -> list[Host]:
    ids = sorted(set(host_ids))
    hosts: list[Host] = []
    for chunk in _chunks(ids):
        # populate_existing: the caller may have just updated these rows in bulk
        hosts += session.scalars(select(Host).where(Host.id.in_(chunk))
                                 .execution_options(populate_existing=True))
    return hosts


def _chunks(ids: Sequence[int]) -> Iterable[list[int]]:
    """``ids`` in IN lists of at most :data:`CHUNK`."""
    ordered = sorted(set(ids))
    for start in range(0, len(ordered), CHUNK):
        yield ordered[start:start + CHUNK]


# -- drift ------------------------------------------------------------------------------

def _relay_text(doc: Mapping[str, Any] | None) -> str | None:
    """``relay.example:587`` (``[relay]`` without MX lookup is shown plain)."""
    if doc is None:
        return None
    return f"{doc.get('host')}:{doc.get('port') or 25}"


def compare(effective: Effective, smarthost: Mapping[str, Any] | None,
            config_in_sync: bool | None, seen: bool,
            password_stale: bool = False) -> list[dict[str, Any]] | None:
    """How a host's last known state differs from its effective policy: ``[{field, want,
    have}]``; ``[]`` in line; None when there is nothing to compare (no complete policy,
    or the host was never seen). ``password_stale``: the credential's password changed
    after the host last received it."""
    if not effective.complete or not seen:
        return None
    drift: list[dict[str, Any]] = []
    want = effective.smarthost
    if want is None or smarthost is None:
        if (want is None) != (smarthost is None):
            drift.append({"field": "smarthost", "want": _relay_text(want),
                          "have": _relay_text(smarthost)})
    else:
        pairs: list[tuple[str, Any, Any]] = [
            ("host", str(want["host"]).lower(), str(smarthost.get("host") or "").lower()),
            ("port", want["port"], smarthost.get("port") or 25),
            ("mx", want["mx"], bool(smarthost.get("mx"))),
            ("auth.username", effective.credential_username,
             (smarthost.get("auth") or {}).get("username")),
            ("tls.mode", want["tls"]["mode"], (smarthost.get("tls") or {}).get("mode")),
        ]
        if want["tls"].get("ca_file") is not None:
            # without one, the host's own bundle is whatever the change resolved to
            pairs.append(("tls.ca_file", want["tls"]["ca_file"],
                          (smarthost.get("tls") or {}).get("ca_file")))
        if "smarthost.masquerade" in effective.sources:
            # only a level that says so: else the host's own masquerade is its business
            have_masq = smarthost.get("masquerade") or None
            want_masq = want.get("masquerade")
            pairs.append(("masquerade.domain", (want_masq or {}).get("domain"),
                          (have_masq or {}).get("domain")))
            if want_masq is not None and have_masq is not None:
                pairs.append(("masquerade.envelope", want_masq["envelope"],
                              bool(have_masq.get("envelope"))))
        if want["host"] != str(smarthost.get("host") or "") and pairs[0][1] == pairs[0][2]:
            pairs[0] = ("host", want["host"], want["host"])  # case only: in line
        drift += [{"field": name, "want": wanted, "have": had}
                  for name, wanted, had in pairs if wanted != had]
        if password_stale and effective.credential_username is not None \
                and not any(d["field"] == "auth.username" for d in drift):
            drift.append({"field": "auth.password", "want": STALE_LOGIN_NOTE,
                          "have": "the password before the change"})
    if config_in_sync is False:
        drift.append({"field": "config_in_sync", "want": True, "have": False})
    return drift


def refresh_drift(session: Session, host_ids: Iterable[int]) -> None:
    """Compute and store the drift of the given hosts (``Host.drift``, ``drift_checked_at``)
    in the caller's transaction."""
    ids = list(host_ids)
    if not ids:
        return
    hosts = _hosts(session, ids)
    if not hosts:
        return
    policies, credentials = _load(session, hosts)
    now = utcnow()
    wanted = {host.id: combine(host.id, host.tenant_id, _levels_of(host, policies),
                               credentials) for host in hosts}
    stale = _password_stale(session, wanted, credentials)
    rows = [{"id": host.id, "drift_checked_at": now,
             "drift": compare(wanted[host.id], host.smarthost, host.config_in_sync,
                              host.last_seen_at is not None, host.id in stale)}
            for host in hosts]
    # one executemany by primary key (not the ORM rows: the caller may have updated them
    # in bulk)
    session.execute(update(Host), rows)
    in_line = [host.id for host, row in zip(hosts, rows, strict=True) if row["drift"] == []]
    for chunk in _chunks(in_line):
        # back in line: a later drift starts the automatic remediation's count afresh
        session.execute(delete(HostRemediation).where(HostRemediation.host_id.in_(chunk)))
    for host, row in zip(hosts, rows, strict=True):
        # the loaded row says the same, without a second UPDATE at the next flush
        set_committed_value(host, "drift", row["drift"])
        set_committed_value(host, "drift_checked_at", now)


def _password_stale(session: Session, wanted: Mapping[int, Effective],
                    credentials: Mapping[int, Credential]) -> set[int]:
    """The hosts whose credential changed after the last set_smarthost they succeeded
    with was made (that job carried the password of its time)."""
    changed: dict[int, dt.datetime] = {}
    for host_id, effective in wanted.items():
        credential = credentials.get(effective.credential_id or 0)
        if credential is not None and credential.updated_at is not None:
            changed[host_id] = credential.updated_at
    if not changed:
        return set()
    since = min(changed.values())
    received: set[int] = set()
    for chunk in _chunks(list(changed)):
        for host_id, created_at, options in session.execute(
                select(JobHost.host_id, Job.created_at, Job.options)
                .join(Job, Job.id == JobHost.job_id)
                .where(Job.action == "set_smarthost", Job.created_at >= since,
                       JobHost.status == UnitState.SUCCEEDED.value,
                       JobHost.host_id.in_(chunk))):
            if not (options or {}).get("dry_run") and created_at >= changed[host_id]:
                received.add(host_id)
    return set(changed) - received


def refresh_drift_after(session: Session, action: str, host_id: int) -> None:
    """After a unit was recorded: the host's drift again, when the action can change what
    drift compares; in a savepoint, so that a failure here never loses the unit's result."""
    if action not in DRIFT_ACTIONS:
        return
    try:
        with session.begin_nested():
            refresh_drift(session, [host_id])
    except Exception:
        # the next recorded unit or policy change computes it again
        log.exception("host %s: drift not computed after its %s result", host_id, action,
                      extra={"host": host_id})


def drifted(host: Host) -> bool:
    """Whether the host is known to differ from its policy."""
    return bool(host.drift)


def drifted_clause() -> Any:
    """SQL: the host's drift is a non-empty list (both SQLite and PostgreSQL)."""
    return func.coalesce(func.json_array_length(Host.drift), 0) > 0


# -- remediation ------------------------------------------------------------------------

@dataclass
class Plan:
    """The jobs a remediation starts: one per distinct effective policy (and what each
    host keeps of its own: its mailer, its masquerade when no level sets one)."""

    groups: dict[str, tuple[Effective, dict[str, Any], list[tuple[int, str]]]] = field(
        default_factory=dict)
    in_line: int = 0
    unknown: int = 0
    #: hosts left alone: ``{host, reason}``
    skipped: list[dict[str, Any]] = field(default_factory=list)


def _kept(effective: Effective, smarthost: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a remediation keeps of the host's own relay setting, as set_smarthost params:
    its mailer (no policy field sets one), and its masquerade when no level sets one (a
    set_smarthost without it would take it out)."""
    if effective.smarthost is None or smarthost is None:
        return {}
    kept: dict[str, Any] = {}
    if smarthost.get("mailer") not in (None, "relay"):
        kept["mailer"] = smarthost["mailer"]
    if "smarthost.masquerade" not in effective.sources and smarthost.get("masquerade"):
        kept["masquerade"] = smarthost["masquerade"]
    return kept


def plan_remediation(session: Session, hosts: Sequence[tuple[int, str]],
                     busy: Mapping[int, str] | None = None) -> Plan:
    """Group the drifted hosts among ``hosts`` by their effective policy; ``busy``: hosts
    to skip, with why."""
    plan = Plan()
    names = dict(hosts)
    rows = _hosts(session, list(names))
    policies, credentials = _load(session, rows)
    for host in sorted(rows, key=lambda row: row.id):
        effective = combine(host.id, host.tenant_id, _levels_of(host, policies), credentials)
        if host.drift is None or not effective.complete:
            plan.unknown += 1
        elif not host.drift:
            plan.in_line += 1
        elif busy and host.id in busy:
            plan.skipped.append({"host": names[host.id], "reason": busy[host.id]})
        else:
            kept = _kept(effective, host.smarthost)
            key = effective.key() + json.dumps(kept, sort_keys=True)
            plan.groups.setdefault(key, (effective, kept, []))[2].append(
                (host.id, names[host.id]))
    return plan


def job_body(session: Session, box: SecretBox, effective: Effective,
             host_ids: list[int], options: Mapping[str, Any], *,
             kept: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The job document that brings hosts in line with ``effective`` (the credential's
    password opened here, sealed again by the job); ``kept``: the hosts' own mailer or
    masquerade, kept."""
    target = {"hosts": host_ids}
    if effective.smarthost is None:
        raw: dict[str, Any] = {"action": "remove_smarthost", "target": target, "params": {},
                               "options": dict(options)}
    else:
        params = {**effective.smarthost, **(kept or {})}
        if params.get("masquerade") is None:
            params.pop("masquerade", None)
        if effective.credential_id is not None:
            credential = session.get(Credential, effective.credential_id)
            if credential is None:
                raise Conflict("the policy's credential was deleted meanwhile: try again")
            params["auth"] = {"username": credential.username,
                              "password": box.open(credential.password_sealed)}
        raw = {"action": "set_smarthost", "target": target, "params": params,
               "options": dict(options)}
    errors: dict[str, list[str]] = {}
    try:
        body: dict[str, Any] = job_svc.job_create_schema().load(raw)
    except SchemaError as exc:
        # only the messages leave: the exception holds the body, password included
        errors = _flat_errors(exc.messages)
    else:
        return body
    refused = {key: reasons for key, reasons in errors.items() if key.startswith("options")}
    if refused:
        raise refusal("remediation", refused)
    raise ValidationError.for_field(
        "options", f"the remediation job was refused ({', '.join(sorted(errors))}): check "
                   "the hosts' policy with GET /v1/hosts/{id}/desired")


def _flat_errors(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """marshmallow's nested messages as ``{"options.canary": [...]}``."""
    if isinstance(messages, Mapping):
        flat: dict[str, list[str]] = {}
        for key, value in messages.items():
            name = str(key) if key != "_schema" else prefix.rstrip(".") or "_schema"
            flat.update(_flat_errors(value, f"{prefix}{name}." if key != "_schema"
                                     else prefix))
        return flat
    reasons = [str(item) for item in messages] if isinstance(messages, list) \
        else [str(messages)]
    return {prefix.rstrip(".") or "_schema": reasons}


def _lock_tenants(session: Session, host_ids: Sequence[int]) -> None:
    """Lock the tenant rows of the given hosts (SELECT ... FOR UPDATE, lowest id first)
    until the transaction ends: two remediations of one tenant (beat's ticks, an
    operator's) then see each other's jobs rather than start the same ones twice."""
    tenants: set[int] = set()
    for chunk in _chunks(host_ids):
        tenants.update(session.scalars(select(Host.tenant_id).where(Host.id.in_(chunk))
                                       .distinct()))
    if tenants:
        session.execute(select(Tenant.id).where(Tenant.id.in_(sorted(tenants)))
                        .order_by(Tenant.id).with_for_update())


def busy_hosts(session: Session, host_ids: Sequence[int]) -> dict[int, str]:
    """The hosts with a job that changes hosts still unfinished on them, whatever started
    it (an operator's canary rollout is not undone half way), with why."""
    busy: dict[int, str] = {}
    for chunk in _chunks(host_ids):
        for host_id, job_id, action in session.execute(
                select(JobHost.host_id, Job.id, Job.action)
                .join(Job, Job.id == JobHost.job_id)
                .where(JobHost.host_id.in_(chunk), Job.action.in_(CHANGE_ACTIONS),
                       JobHost.status.not_in(FINISHED_UNIT_STATES))
                .order_by(Job.id)):
            busy.setdefault(int(host_id), f"job {job_id} ({action}) is still running on it")
    return busy


def start_remediation(session: Session, who: Principal, *, box: SecretBox,
                      database: Database, settings: Settings, hosts: Sequence[tuple[int, str]],
                      options: Mapping[str, Any], origin: JobOrigin) -> dict[str, Any]:
    """Start one job per distinct effective policy over the drifted ``hosts`` that no
    unfinished change is running on (not committed: the jobs' lanes go out at commit);
    answer ``{jobs, in_line, unknown, skipped}``."""
    who.require("operator")
    ids = [host_id for host_id, _ in hosts]
    _lock_tenants(session, ids)
    plan = plan_remediation(session, hosts, busy_hosts(session, ids))
    started = []
    for effective, kept, group in plan.groups.values():
        body = job_body(session, box, effective, [host_id for host_id, _ in group], options,
                        kept=kept)
        job = job_svc.start_job(session, who, body, box, database,
                                max_timeout_s=settings.max_timeout_s,
                                lane_threads=settings.lane_threads, host_rows=group,
                                origin=origin)
        started.append({"id": job.id, "action": job.action, "hosts": job.total,
                        "links": job_svc.job_links(job.id),
                        "host_ids": [host_id for host_id, _ in group]})
    return {"jobs": started, "in_line": plan.in_line, "unknown": plan.unknown,
            "skipped": plan.skipped}


def remediate(session: Session, who: Principal, *, box: SecretBox, database: Database,
              settings: Settings, target: Mapping[str, Any],
              options: Mapping[str, Any]) -> dict[str, Any]:
    """``POST /v1/remediate``: bring the drifted hosts of ``target`` in line with their
    policies (operators); hosts a change still runs on are skipped and said so."""
    who.require("operator")
    hosts = job_svc.resolve_target(session, who, dict(target))
    answer = start_remediation(session, who, box=box, database=database, settings=settings,
                               hosts=hosts, options=options,
                               origin=JobOrigin(OriginKind.REMEDIATE))
    if not options.get("dry_run"):
        # an operator took these hosts on: the automatic remediation may try them again
        remediated = [host_id for job in answer["jobs"] for host_id in job["host_ids"]]
        for chunk in _chunks(remediated):
            session.execute(delete(HostRemediation).where(HostRemediation.host_id.in_(chunk)))
    return answer


def stuck_hosts(session: Session, host_ids: Sequence[int]) -> set[int]:
    """The hosts the automatic remediation leaves alone: their drift was the same after
    their last :data:`REMEDIATE_TRIES` automatic remediations (until it changes or an
    operator remediates them)."""
    stuck: set[int] = set()
    for chunk in _chunks(host_ids):
        for host_id, drift, tried, attempts in session.execute(
                select(Host.id, Host.drift, HostRemediation.drift, HostRemediation.attempts)
                .join(HostRemediation, HostRemediation.host_id == Host.id)
                .where(Host.id.in_(chunk))):
            if attempts >= REMEDIATE_TRIES and drift and _same(drift, tried):
                stuck.add(int(host_id))
    return stuck


def _same(one: Any, other: Any) -> bool:
    return json.dumps(one, sort_keys=True) == json.dumps(other, sort_keys=True)


def _note_attempts(session: Session, host_ids: Sequence[int]) -> None:
    """Count an automatic remediation of each host: one more try at the same drift, or the
    first at a new one."""
    drifts: dict[int, Any] = {}
    for chunk in _chunks(host_ids):
        drifts.update((int(host_id), drift) for host_id, drift in session.execute(
            select(Host.id, Host.drift).where(Host.id.in_(chunk))))
    marks = {row.host_id: row for chunk in _chunks(host_ids) for row in session.scalars(
        select(HostRemediation).where(HostRemediation.host_id.in_(chunk)))}
    now = utcnow()
    for host_id, drift in drifts.items():
        mark = marks.get(host_id)
        if mark is None:
            session.add(HostRemediation(host_id=host_id, drift=drift, attempts=1,
                                        updated_at=now))
        elif _same(mark.drift, drift):
            mark.attempts += 1
            mark.updated_at = now
        else:
            mark.drift, mark.attempts, mark.updated_at = drift, 1, now


def _recently_remediated(session: Session, host_ids: Sequence[int],
                         now: dt.datetime) -> set[int]:
    """Hosts a remediation (not a dry run) was started for in the quiet period."""
    quiet = now - dt.timedelta(seconds=REMEDIATE_QUIET_S)
    recent: set[int] = set()
    for chunk in _chunks(host_ids):
        for host_id, options in session.execute(
                select(JobHost.host_id, Job.options).join(Job, Job.id == JobHost.job_id)
                .where(Job.origin == OriginKind.REMEDIATE.value, Job.created_at >= quiet,
                       JobHost.host_id.in_(chunk))):
            if not (options or {}).get("dry_run"):
                recent.add(int(host_id))
    return recent


def _spent_this_hour(session: Session, tenant_id: int, now: dt.datetime) -> int:
    """How many hosts automatic remediations of the tenant took on in the last hour."""
    return int(session.scalar(
        select(func.count()).select_from(JobHost).join(Job, Job.id == JobHost.job_id).where(
            Job.origin == OriginKind.REMEDIATE.value, Job.tenant_id == tenant_id,
            Job.token_id.is_(None), Job.created_at >= now - dt.timedelta(hours=1))) or 0)


def tick(database: Database, settings: Settings) -> None:
    """Beat's step: remediate the drifted hosts whose policy says ``auto_remediate``, at
    most the tenant's ``remediate_per_hour`` hosts an hour, never a host a change still
    runs on, one remediated in the last 15 minutes, or one whose drift outlived its last
    two automatic remediations."""
    box = SecretBox(settings.secret_key, settings.old_secret_keys)
    with database.transaction() as session:
        drifted_hosts = list(session.execute(
            select(Host.id, Host.name, Host.tenant_id).where(
                Host.deleted_at.is_(None), drifted_clause()).order_by(Host.id)))
    by_tenant: dict[int, list[tuple[int, str]]] = {}
    for host_id, name, tenant_id in drifted_hosts:
        by_tenant.setdefault(int(tenant_id), []).append((int(host_id), str(name)))
    for tenant_id, hosts in by_tenant.items():
        try:
            _tick_tenant(database, settings, box, tenant_id, hosts)
        except Exception:
            # one tenant's trouble (a deleted credential, the broker) spares the others
            log.exception("automatic remediation of tenant %s failed; the next tick tries "
                          "again", tenant_id)


def _tick_tenant(database: Database, settings: Settings, box: SecretBox, tenant_id: int,
                 hosts: list[tuple[int, str]]) -> None:
    now = utcnow()
    with database.transaction() as session:
        # one tick at a time per tenant: a concurrent one waits here, then sees these jobs
        session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())
        wanted = effective_policies(session, [host_id for host_id, _ in hosts])
        eligible = [(host_id, name) for host_id, name in hosts
                    if wanted.get(host_id) is not None and wanted[host_id].auto_remediate
                    and wanted[host_id].complete]
        if not eligible:
            return
        budget = next(iter(wanted.values())).remediate_per_hour \
            - _spent_this_hour(session, tenant_id, now)
        ids = [host_id for host_id, _ in eligible]
        skip = set(busy_hosts(session, ids)) | _recently_remediated(session, ids, now) \
            | stuck_hosts(session, ids)
        chosen = [row for row in eligible if row[0] not in skip][:max(budget, 0)]
        if not chosen:
            return
        who = system_principal(tenant_id, REMEDIATION_PRINCIPAL)
        answer = start_remediation(session, who, box=box, database=database,
                                   settings=settings, hosts=chosen, options={},
                                   origin=JobOrigin(OriginKind.REMEDIATE))
        _note_attempts(session, [host_id for job in answer["jobs"]
                                 for host_id in job["host_ids"]])
    for job in answer["jobs"]:
        log.info("tenant %s: automatic remediation job %s (%s) for %s drifted hosts",
                 tenant_id, job["id"], job["action"], job["hosts"], extra={"job_id": job["id"]})
