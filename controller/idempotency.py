"""Idempotency-Key: the same create request under the same key answers the same object.

A key is per token and kept :data:`IDEMPOTENCY_TTL`. The created object and the answer
stored under its key are committed together, in one transaction, so a retry after a crash
finds either both or neither. The same key with another request is 422. A second request
under a key whose first is still being handled waits for the first to commit and answers
as it did. (Before keys were taken in the create's own transaction, a key was committed
"in progress" on its own first: such a row still answers 409 while its request may live,
and is taken over once it is abandoned.)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controller.auth import Principal
from controller.db import table_of, utcnow
from controller.dispatch import NotQueued, commit
from controller.errors import Conflict
from controller.models import IdempotencyKey
from controller.precompiled import Precompiled
from shared.errors import ValidationError

#: how long an Idempotency-Key is remembered (the contract says at least 24 h)
IDEMPOTENCY_TTL = dt.timedelta(hours=48)
#: an "in progress" key (committed on its own by an earlier version before its create ran)
#: may be taken over after this, and only if that request is gone (its transaction no
#: longer holds the key: :func:`_owner_gone`).
IDEMPOTENCY_ABANDONED = dt.timedelta(seconds=5)

_STILL_BEING_HANDLED = ("a request with this Idempotency-Key is still being handled; "
                        "retry in a moment")

#: what an idempotent create returns: the HTTP status and the answer (plain JSON)
Created = tuple[int, dict[str, Any]]

# Every create runs these: built once (building a statement and its cache key each time
# costs more CPU than sending it).
_KEYS = table_of(IdempotencyKey)
_TAKE = Precompiled(insert(_KEYS).returning(_KEYS.c.id))
_ANSWER = Precompiled(update(_KEYS).where(_KEYS.c.id == bindparam("key_id")).values(
    state="done", status_code=bindparam("b_status", type_=_KEYS.c.status_code.type),
    response=bindparam("b_response", type_=_KEYS.c.response.type)))


def request_fingerprint(key: bytes, method: str, path: str, body: Any) -> str:
    """HMAC-SHA256 (keyed, so a stored fingerprint reveals nothing about secrets in the
    body) of the method, path and canonical JSON body."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hmac.new(key, f"{method} {path}\n{canonical}".encode(), hashlib.sha256).hexdigest()


def idempotent(session: Session, who: Principal, key: str | None, fingerprint: str,
               create: Callable[[], Created]) -> Created:
    """Run ``create`` once per (token, key) and commit; replay its answer for the same
    request. ``create`` stores its object without committing; work it registered with
    :func:`controller.dispatch.send_after_commit` is queued by the commit (if it cannot
    be, the key keeps the 503 answer)."""
    if key is None:
        answer = create()
        commit(session)
        return answer
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise ValidationError.for_field("Idempotency-Key", "must be 1-255 printable characters")
    now = utcnow()
    try:
        # Taken in the create's own transaction, before it: a retry of a finished create
        # replays its answer (and never meets the object it made, e.g. as a duplicate
        # name); a second request while this one works waits at this insert (the unique
        # index; SQLite: the write lock) until this one commits, then replays its answer,
        # or creates if this one rolled back. One commit for the key, the object and the
        # answer, and none for a request that fails.
        row_id = _TAKE.execute(session, {
            "token_id": who.token_id, "key": key, "request_sha256": fingerprint,
            "state": "in_progress", "created_at": now}).scalar_one()
    except IntegrityError:
        session.rollback()
        return _replay(session, who, key, fingerprint, now=now, create=create)
    try:
        status, response = create()
        _ANSWER.execute(session, {"key_id": row_id, "b_status": status,
                                  "b_response": json.loads(json.dumps(response, default=str))})
    except BaseException:
        session.rollback()
        raise
    try:
        commit(session)
    except NotQueued as exc:
        # The object is committed: the key keeps naming it, and answers as this call did
        # (a retry with the same key must not make a second one).
        session.rollback()
        code = exc.status
        _ANSWER.execute(session, {"key_id": row_id, "b_status": code, "b_response": {
            "code": code, "status": HTTPStatus(code).phrase, "message": exc.message}})
        session.commit()
        raise
    return status, response


def _replay(session: Session, who: Principal, key: str, fingerprint: str, *, now: dt.datetime,
            create: Callable[[], Created]) -> Created:
    """The key exists: answer as it did, refuse, or take over an abandoned one."""
    existing = session.scalar(select(IdempotencyKey).where(
        IdempotencyKey.token_id == who.token_id, IdempotencyKey.key == key))
    if existing is None:  # purged between our insert and this read: go again
        return idempotent(session, who, key, fingerprint, create)
    if existing.request_sha256 != fingerprint:
        raise ValidationError.for_field(
            "Idempotency-Key", "this key was already used with a different request; "
                               "use a new key for a new request")
    if existing.state != "done":
        if now - existing.created_at < IDEMPOTENCY_ABANDONED or not _owner_gone(session,
                                                                                 existing):
            raise Conflict(_STILL_BEING_HANDLED)
        session.delete(existing)
        session.commit()
        return idempotent(session, who, key, fingerprint, create)
    return existing.status_code or 200, existing.response or {}


def _owner_gone(session: Session, existing: IdempotencyKey) -> bool:
    """Has the request that holds this in-progress key ended (its process died)?

    Its transaction held the key's row for as long as it worked, however long that is:
    a row we can lock without waiting has no live owner. (SQLite has one writer: this
    transaction began, so the owner's has ended.) The state is re-read under the lock: an
    owner that has just finished is not taken over (the 409 it gets makes the client
    retry, and the retry replays the answer).
    """
    state = session.scalar(select(IdempotencyKey.state)
                           .where(IdempotencyKey.id == existing.id)
                           .with_for_update(skip_locked=True))
    return state is not None and state != "done"


def purge_expired(session: Session) -> int:
    """Forget keys older than :data:`IDEMPOTENCY_TTL` (the sweeper calls this)."""
    done = session.execute(delete(IdempotencyKey).where(
        IdempotencyKey.created_at < utcnow() - IDEMPOTENCY_TTL))
    return int(getattr(done, "rowcount", 0))
