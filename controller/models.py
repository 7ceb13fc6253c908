"""Inventory, tokens, jobs, audit and idempotency keys as SQLAlchemy 2 models.

Secrets live only in ``*_sealed`` columns (Fernet, see :mod:`controller.crypto`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from controller.db import Base, UtcDateTime, utcnow

ROLES = ("viewer", "operator", "admin")
TRANSPORTS = ("agent", "ssh")
#: SQLite would hand a deleted row's id to the next row (a new tenant inheriting an old
#: one's audit trail or tokens' keys); AUTOINCREMENT stops that. PostgreSQL never reuses.
NEVER_REUSE_IDS: Any = {"sqlite_autoincrement": True}


class Tenant(Base):
    """One of the MSP's customers."""

    __tablename__ = "tenants"
    __table_args__ = NEVER_REUSE_IDS
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    #: the key this tenant's job callbacks are signed with, sealed; ``None`` for tenants
    #: made before keys were per tenant (one is made at their first callback)
    callback_key_sealed: Mapped[str | None] = mapped_column(Text)
    #: how often beat collects the status of every host of the tenant, spread over that
    #: interval (seconds; 0: never)
    status_every_s: Mapped[int] = mapped_column(Integer, default=600, server_default="600")


class Site(Base):
    """A customer location; it owns hosts."""

    __tablename__ = "sites"
    __table_args__ = (UniqueConstraint("tenant_id", "name"), NEVER_REUSE_IDS)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="RESTRICT"),
                                           index=True)
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class Host(Base):
    """A managed mail/PBX host and how to reach it."""

    __tablename__ = "hosts"
    # Names are unique among the hosts not deleted: a deleted host's name can be reused.
    __table_args__ = (Index("uq_hosts_site_name_live", "site_id", "name", unique=True,
                            sqlite_where=text("deleted_at IS NULL"),
                            postgresql_where=text("deleted_at IS NULL")),
                      NEVER_REUSE_IDS)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The tenant is the site's; kept here too so that every scoped query is one index away.
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="RESTRICT"),
                                           index=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="RESTRICT"),
                                         index=True)
    name: Mapped[str] = mapped_column(String(253))
    address: Mapped[str] = mapped_column(String(255))
    transport: Mapped[str] = mapped_column(String(10))
    agent_url: Mapped[str | None] = mapped_column(String(500))
    agent_token_sealed: Mapped[str | None] = mapped_column(Text)
    agent_ca_cert: Mapped[str | None] = mapped_column(Text)
    # SHA-256 of the agent's DER certificate (64 hex digits): pinned like an SSH host key
    agent_tls_fingerprint: Mapped[str | None] = mapped_column(String(64))
    # plain http:// to the agent, on the operator's explicit say-so
    agent_insecure_http: Mapped[bool] = mapped_column(Boolean, default=False)
    ssh_port: Mapped[int] = mapped_column(Integer, default=22)
    ssh_username: Mapped[str | None] = mapped_column(String(64))
    ssh_private_key_sealed: Mapped[str | None] = mapped_column(Text)
    ssh_passphrase_sealed: Mapped[str | None] = mapped_column(Text)
    ssh_password_sealed: Mapped[str | None] = mapped_column(Text)
    ssh_host_key: Mapped[str | None] = mapped_column(Text)
    ssh_sudo: Mapped[bool] = mapped_column(Boolean, default=False)
    mta_kind: Mapped[str] = mapped_column(String(20), default="sendmail")
    mta_flavour: Mapped[str] = mapped_column(String(20), default="debian")
    mta_overrides: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    # last known state, from the latest job that learnt something about the host
    last_seen_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    last_reachable: Mapped[bool | None] = mapped_column(Boolean)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_job_id: Mapped[int | None] = mapped_column(Integer)
    queue_count: Mapped[int | None] = mapped_column(Integer)
    smarthost: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    config_in_sync: Mapped[bool | None] = mapped_column(Boolean)
    mta_running: Mapped[bool | None] = mapped_column(Boolean)
    #: the MTA kind the host was last found running (the agent's status, or what the SSH
    #: transport detected for kind ``auto`` and drove it as); NULL until a job has told.
    #: SSH runs of an ``auto`` host reuse it instead of detecting again.
    mta_detected_kind: Mapped[str | None] = mapped_column(String(20))
    #: the oldest queued message's age in seconds at the last status (NULL: not known)
    queue_oldest_age_s: Mapped[int | None] = mapped_column(Integer)
    #: the named causes (:mod:`controller.doctor`) the host's queue and maillog showed at its
    #: last status: ``[{cause, count, sample}]``
    causes: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON(none_as_null=True))
    #: how many status checks in a row could not reach the host
    unreachable_streak: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: how the host's last known state differs from its desired state
    #: (:mod:`controller.policy`): ``[{field, want, have}]``; NULL: no policy applies or
    #: not known yet; ``[]``: in line with its policy
    drift: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON(none_as_null=True))
    drift_checked_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    #: set when the host is deleted: it leaves inventory, targets and the fleet, and past
    #: jobs keep their results for it
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)

    tag_rows: Mapped[list[HostTag]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="HostTag.tag")

    @property
    def tags(self) -> list[str]:
        """The host's tags, sorted."""
        return [row.tag for row in self.tag_rows]


class HostTag(Base):
    """One tag on one host (a table of its own so that targeting by tag is an index hit)."""

    __tablename__ = "host_tags"
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"),
                                         primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class Token(Base):
    """An API token: stored as the SHA-256 of its secret; the secret is shown once."""

    __tablename__ = "tokens"
    __table_args__ = NEVER_REUSE_IDS
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(24), unique=True)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(10))
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                                  index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    created_by: Mapped[int | None] = mapped_column(Integer)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)


class Job(Base):
    """One action on a set of hosts."""

    __tablename__ = "jobs"
    # A claim counts its tenant's running units over the tenant's unfinished jobs only:
    # this index keeps that independent of how many jobs the tenant ever ran.
    __table_args__ = (Index("ix_jobs_unfinished_tenant", "tenant_id",
                            sqlite_where=text("finished_at IS NULL"),
                            postgresql_where=text("finished_at IS NULL")),
                      NEVER_REUSE_IDS)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id", ondelete="SET NULL"),
                                                  index=True)
    token_id: Mapped[int | None] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(32))
    #: a :class:`controller.ledger.JobState`, changed only by the ledger
    status: Mapped[str] = mapped_column(String(16), index=True)
    target: Mapped[dict[str, Any]] = mapped_column(JSON(none_as_null=True))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # the part of params that is secret (SMTP AUTH password), sealed
    params_sealed: Mapped[str | None] = mapped_column(Text)
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    callback_url: Mapped[str | None] = mapped_column(String(2000))
    callback_state: Mapped[str | None] = mapped_column(String(200))
    retry_of: Mapped[int | None] = mapped_column(Integer)
    #: what started it: ``api`` (a token: API, CLI, console), ``schedule``, ``remediate``,
    #: ``inbound`` (a ticketing webhook)
    origin: Mapped[str] = mapped_column(String(16), default="api", server_default="api")
    #: the schedule or inbound hook that started it
    schedule_id: Mapped[int | None] = mapped_column(Integer)
    inbound_hook_id: Mapped[int | None] = mapped_column(Integer)
    total: Mapped[int] = mapped_column(Integer, default=0)
    #: epoch seconds of the last sign of life from one of the job's lanes (the sweeper
    #: re-enqueues a lane for an unfinished job that has been silent too long)
    heartbeat_at: Mapped[float | None] = mapped_column(Float, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)


class JobHost(Base):
    """One host's part of a job: the unit a worker claims, runs once and records."""

    __tablename__ = "job_hosts"
    __table_args__ = (UniqueConstraint("job_id", "host_id"),
                      Index("ix_job_hosts_claim", "job_id", "status", "wave", "id"),
                      NEVER_REUSE_IDS)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), index=True)
    host_name: Mapped[str] = mapped_column(String(253))
    #: a :class:`controller.ledger.UnitState`, changed only by the ledger
    status: Mapped[str] = mapped_column(String(16))
    #: the rollout wave the unit belongs to (``options.canary``/``wave_size``): wave 0 is
    #: the canary; a wave starts only when every earlier one succeeded. 0 without waves.
    wave: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: epoch seconds until which the worker that claimed the unit owns it
    lease_until: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    steps: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON(none_as_null=True))
    changed: Mapped[bool | None] = mapped_column(Boolean)
    started_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)


class AuditEvent(Base):
    """Who did what to which object, and how it ended."""

    __tablename__ = "audit_events"
    __table_args__ = NEVER_REUSE_IDS
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    token_id: Mapped[int | None] = mapped_column(Integer, index=True)
    token_name: Mapped[str | None] = mapped_column(String(100))
    tenant_id: Mapped[int | None] = mapped_column(Integer, index=True)
    action: Mapped[str] = mapped_column(String(100))
    target: Mapped[str | None] = mapped_column(String(200))
    outcome: Mapped[int] = mapped_column(Integer)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    remote_addr: Mapped[str | None] = mapped_column(String(64))


class IdempotencyKey(Base):
    """A create request seen under an Idempotency-Key, and the answer it got."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("token_id", "key"), NEVER_REUSE_IDS)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_id: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(String(255))
    request_sha256: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="in_progress")
    status_code: Mapped[int | None] = mapped_column(Integer)
    response: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)


class ConsoleSession(Base):
    """A web console sign-in: the browser's cookie holds a random secret, this row only its
    SHA-256. It ends at ``expires_at``, when unused for the idle time, at sign-out, or as
    soon as its token is revoked."""

    __tablename__ = "console_sessions"
    __table_args__ = NEVER_REUSE_IDS
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("tokens.id", ondelete="CASCADE"),
                                          index=True)
    #: the session's CSRF token: every form of the console posts it back
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, index=True)
    #: written at most once a minute (not at every page), so the idle time is that precise
    last_seen_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    remote_addr: Mapped[str | None] = mapped_column(String(64))


# -- fleet health: desired state, schedules, alerts, ticketing in -------------------------

class Credential(Base):
    """A tenant's SMTP AUTH login for a relay, referenced by policies by name: the password
    is write-only (sealed, never returned)."""

    __tablename__ = "credentials"
    __table_args__ = (UniqueConstraint("tenant_id", "name"), NEVER_REUSE_IDS)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                           index=True)
    name: Mapped[str] = mapped_column(String(100))
    username: Mapped[str] = mapped_column(String(255))
    password_sealed: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)


class Policy(Base):
    """Desired state at one level: a tenant's (site and host NULL), a site's (host NULL)
    or one host's. A host inherits host > site > tenant, field by field."""

    __tablename__ = "policies"
    __table_args__ = NEVER_REUSE_IDS
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                           index=True)
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"),
                                                index=True)
    host_id: Mapped[int | None] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"),
                                                index=True)
    #: ``tenant:ID``, ``site:ID`` or ``host:ID``: one policy per level and object
    scope: Mapped[str] = mapped_column(String(40), unique=True)
    #: the desired smarthost settings this level sets (see controller.policy)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    credential_id: Mapped[int | None] = mapped_column(
        ForeignKey("credentials.id", ondelete="RESTRICT"), index=True)
    #: remediate drifted hosts without being asked (None: inherit)
    auto_remediate: Mapped[bool | None] = mapped_column(Boolean)
    #: at most this many automatic remediations per hour for the tenant (None: inherit)
    remediate_per_hour: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)


class HostRemediation(Base):
    """The automatic remediation's back-off for one host: the drift it last set out to fix
    and how many automatic remediations in a row met that same drift."""

    __tablename__ = "host_remediations"
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"),
                                         primary_key=True)
    drift: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON(none_as_null=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class Schedule(Base):
    """An operator's schedule: an action on a target, run by beat at the times a cron
    expression names in a time zone."""

    __tablename__ = "schedules"
    __table_args__ = (UniqueConstraint("tenant_id", "name"), NEVER_REUSE_IDS)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                                  index=True)
    #: the token it runs as (its role and tenant scope); the schedule stops if it is revoked
    token_id: Mapped[int | None] = mapped_column(ForeignKey("tokens.id", ondelete="SET NULL"))
    name: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[dict[str, Any]] = mapped_column(JSON)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    params_sealed: Mapped[str | None] = mapped_column(Text)
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    cron: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    next_run_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, index=True)
    last_run_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    last_job_id: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class SchedulerMark(Base):
    """Where beat's periodic work left off (``name`` -> epoch seconds), so a restarted beat
    neither repeats nor skips a window."""

    __tablename__ = "scheduler_marks"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    at: Mapped[float] = mapped_column(Float)


class AlertChannel(Base):
    """Where a tenant's alert notices go: a signed webhook, an email address, or a
    Slack/Teams-compatible incoming webhook. The URL and the signing key are sealed."""

    __tablename__ = "alert_channels"
    __table_args__ = (UniqueConstraint("tenant_id", "name"), NEVER_REUSE_IDS)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                                  index=True)
    name: Mapped[str] = mapped_column(String(100))
    #: ``webhook``, ``email``, ``slack`` or ``teams``
    kind: Mapped[str] = mapped_column(String(16))
    #: the URL (webhook, slack, teams; secret: an incoming webhook's URL is its key) or the
    #: email address, sealed
    target_sealed: Mapped[str] = mapped_column(Text)
    #: what the API shows of the target (``https://hooks.slack.com/…``, the address)
    target_hint: Mapped[str] = mapped_column(String(200))
    #: the HMAC key webhook notices are signed with, sealed
    secret_sealed: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class AlertRule(Base):
    """A condition on the fleet's last known state that fires an alert per host."""

    __tablename__ = "alert_rules"
    __table_args__ = (UniqueConstraint("tenant_id", "name"), NEVER_REUSE_IDS)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                                  index=True)
    name: Mapped[str] = mapped_column(String(100))
    #: ``queue_count``, ``oldest_age``, ``unreachable``, ``drift``, ``cause``
    kind: Mapped[str] = mapped_column(String(16))
    #: queue_count: messages; oldest_age: seconds; unreachable: checks in a row
    threshold: Mapped[int | None] = mapped_column(Integer)
    #: kind ``cause``: the doctor's cause key (None: any cause)
    cause: Mapped[str | None] = mapped_column(String(40))
    #: narrows the hosts it watches: ``{sites: [...], tags: [...]}`` (empty: the tenant's all)
    scope: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    channel_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class Alert(Base):
    """One rule firing for one host, from when it fired until it resolved. At most one
    unresolved alert per rule and host: that is the de-duplication."""

    __tablename__ = "alerts"
    __table_args__ = (Index("uq_alerts_open", "rule_id", "host_id", unique=True,
                            sqlite_where=text("resolved_at IS NULL"),
                            postgresql_where=text("resolved_at IS NULL")),
                      NEVER_REUSE_IDS)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rule_id: Mapped[int] = mapped_column(ForeignKey("alert_rules.id", ondelete="CASCADE"),
                                         index=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"),
                                         index=True)
    tenant_id: Mapped[int | None] = mapped_column(Integer, index=True)
    #: what the host showed when it fired (``{queue_count: 12}``, the drift, the cause)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    fired_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, index=True)


class AlertNotice(Base):
    """One notice of one alert event to one channel: sent once (unique), retried until
    delivered or given up."""

    __tablename__ = "alert_notices"
    __table_args__ = (UniqueConstraint("alert_id", "channel_id", "event"), NEVER_REUSE_IDS)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"),
                                          index=True)
    channel_id: Mapped[int] = mapped_column(ForeignKey("alert_channels.id",
                                                       ondelete="CASCADE"), index=True)
    #: ``firing`` or ``resolved``
    event: Mapped[str] = mapped_column(String(16))
    #: ``pending``, ``sent`` or ``failed``
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    #: when a worker took the notice for the attempt under way (NULL: none is): a second
    #: message for the same notice finds it taken and sends nothing
    claimed_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    #: when a worker or the tick last acted on the notice (made, taken, its outcome
    #: noted, queued again): a pending notice untouched for long lost its message
    touched_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)


class InboundHook(Base):
    """A tenant's inbound ticketing webhook: a signed request maps to a job run as the
    hook's token; the job's result goes back through its callback."""

    __tablename__ = "inbound_hooks"
    __table_args__ = (UniqueConstraint("tenant_id", "name"), NEVER_REUSE_IDS)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: what the hook's URL names (random: the URL alone reveals nothing)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                           index=True)
    token_id: Mapped[int | None] = mapped_column(ForeignKey("tokens.id", ondelete="SET NULL"))
    name: Mapped[str] = mapped_column(String(100))
    #: the payload format: ``zendesk`` or ``generic``
    format: Mapped[str] = mapped_column(String(16))
    #: the HMAC key requests are signed with, sealed
    secret_sealed: Mapped[str] = mapped_column(Text)
    #: how a payload becomes a job (see controller.inbound)
    mapping: Mapped[dict[str, Any]] = mapped_column(JSON)
    callback_url: Mapped[str | None] = mapped_column(String(2000))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class InboundDelivery(Base):
    """A signed request an inbound hook accepted (its signature's digest is unique: the
    same request again is a replay), and the job it started."""

    __tablename__ = "inbound_deliveries"
    __table_args__ = (UniqueConstraint("hook_id", "signature_sha256"), NEVER_REUSE_IDS)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    hook_id: Mapped[int] = mapped_column(ForeignKey("inbound_hooks.id", ondelete="CASCADE"),
                                         index=True)
    signature_sha256: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    job_id: Mapped[int | None] = mapped_column(Integer)
