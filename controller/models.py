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
    __table_args__ = NEVER_REUSE_IDS
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
                      Index("ix_job_hosts_job_status", "job_id", "status"), NEVER_REUSE_IDS)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), index=True)
    host_name: Mapped[str] = mapped_column(String(253))
    #: a :class:`controller.ledger.UnitState`, changed only by the ledger
    status: Mapped[str] = mapped_column(String(16))
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
