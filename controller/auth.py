"""Bearer tokens: made once, stored as SHA-256, checked in constant time, scoped by tenant.

A token reads ``rft_<public id>_<secret>``. The public id finds the row; the SHA-256 of the
whole token is compared with :func:`hmac.compare_digest`, so a wrong secret costs the same
time whatever its prefix.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from controller.db import table_of, utcnow
from controller.errors import PermissionDenied
from controller.models import ROLES, Token
from controller.precompiled import Precompiled

PREFIX = "rft_"
_RANK = {role: rank for rank, role in enumerate(ROLES)}
# A SHA-256 that matches no token: compared against when the public id is unknown, so a
# miss takes as long as a wrong secret.
_NO_MATCH = "0" * 64
#: what authenticating a call reads of its token (the columns, not the entity: this runs
#: on every call, and loading a row as an object costs more than the query; the statement
#: is built once, as building it costs more than sending it; of the table, not the model:
#: SQLAlchemy's Core path costs a fraction of the ORM's)
_TOKENS = table_of(Token)
_TOKEN_BY_PUBLIC_ID = Precompiled(select(_TOKENS.c.id, _TOKENS.c.secret_sha256, _TOKENS.c.name,
                             _TOKENS.c.role, _TOKENS.c.tenant_id, _TOKENS.c.revoked_at,
                             _TOKENS.c.last_used_at).where(
    _TOKENS.c.public_id == bindparam("public_id")))
_NOTE_USE = Precompiled(update(_TOKENS).where(_TOKENS.c.id == bindparam("token_id")).values(
    last_used_at=bindparam("now", type_=_TOKENS.c.last_used_at.type)))


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's id, name, role and tenant (``None``: the whole MSP)."""

    token_id: int
    name: str
    role: str
    tenant_id: int | None

    def may(self, role: str) -> bool:
        """Whether the token's role is at least ``role``."""
        return _RANK[self.role] >= _RANK[check_role(role)]

    def require(self, role: str) -> None:
        """Refuse the call (403) unless the token's role is at least ``role``."""
        if not self.may(role):
            raise PermissionDenied(f"this needs a token with the {role} role; this token is "
                                   f"{self.role}: ask an administrator for one")

    def sees(self, tenant_id: int | None) -> bool:
        """Whether an object of ``tenant_id`` exists for this token."""
        return self.tenant_id is None or self.tenant_id == tenant_id


#: the token id of the controller acting on its own (beat's status collections and
#: automatic remediations): no token row has it, and jobs it starts store no token
SYSTEM_TOKEN_ID = 0


def system_principal(tenant_id: int | None, name: str) -> Principal:
    """The controller itself acting for one tenant (``None``: MSP-wide) with the operator
    role: what beat's status collections and automatic remediations run as."""
    return Principal(SYSTEM_TOKEN_ID, name, "operator", tenant_id)


def check_role(role: str) -> str:
    """``role`` if it is one of the roles (a programming error otherwise)."""
    if role not in _RANK:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    return role


def sha256_hex(secret: str) -> str:
    """The SHA-256 a secret (a token, a session's cookie) is stored as."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def issue_token(session: Session, *, name: str, role: str, tenant_id: int | None,
                created_by: int | None = None) -> tuple[Token, str]:
    """Create a token row; return it with the token text (shown once, never stored)."""
    check_role(role)
    public_id = secrets.token_hex(6)
    text = f"{PREFIX}{public_id}_{secrets.token_urlsafe(32)}"
    row = Token(public_id=public_id, secret_sha256=sha256_hex(text), name=name, role=role,
                tenant_id=tenant_id, created_by=created_by)
    session.add(row)
    session.flush()
    return row, text


def authenticate(session: Session, presented: str) -> Principal | None:
    """The principal for a presented token, or ``None`` when it is unknown or revoked."""
    public_id = ""
    if presented.startswith(PREFIX):
        public_id = presented[len(PREFIX):].partition("_")[0]
    row = None
    if public_id:
        row = _TOKEN_BY_PUBLIC_ID.execute(session, {"public_id": public_id}).one_or_none()
    expected = row.secret_sha256 if row is not None else _NO_MATCH
    matches = hmac.compare_digest(sha256_hex(presented), expected)
    if row is None or not matches or row.revoked_at is not None:
        return None
    now = utcnow()
    # Recording every use would make each read a write; a minute's precision is plenty.
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
        _NOTE_USE.execute(session, {"token_id": row.id, "now": now})
        session.commit()
    return Principal(row.id, row.name, row.role, row.tenant_id)
