"""Sending Celery tasks: by name, and only once the transaction that made their work has
committed (a worker must never look for a job that is not stored yet).

``send_after_commit(session, ...)`` registers the message on the session; a listener sends
it when that session commits and forgets it when it rolls back. If the broker cannot be
reached, the registered ``on_failure`` runs (in a transaction of its own: the first one has
committed) and :func:`commit` raises :class:`NotQueued`: the object exists, only its work
was not queued. (The listener itself must not raise: SQLAlchemy would leave the session
stuck in its committed state.) Tasks are named here, so the API never imports the task
module and the lanes can queue their own continuations without an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import current_app
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import event
from sqlalchemy.orm import Session

from controller.errors import Unavailable

RUN_LANE = "relayfleet.run_lane"
SWEEP = "relayfleet.sweep"
SEND_CALLBACK = "relayfleet.send_callback"
#: beat's fleet-health tick (controller.tasks.tick)
TICK = "relayfleet.tick"
#: one alert notice to one channel (controller.alerts)
SEND_NOTICE = "relayfleet.send_notice"

_PENDING = "relayfleet_after_commit"
_FAILED = "relayfleet_not_queued"


class NotQueued(Unavailable):
    """The object was stored, but the broker refused the work it needs (503)."""


@dataclass(frozen=True)
class _Message:
    task: str
    args: tuple[Any, ...]
    on_failure: Callable[[], None] | None
    required: bool


#: the queues a publish declares: none (see :func:`send`)
_NO_DECLARE: list[Any] = []


def send(task: str, *args: Any, countdown: float | None = None) -> None:
    """Queue ``task(*args)`` now (raises :class:`NotQueued` if the broker is down)."""
    celery = current_app.extensions["celery"]
    try:
        # The message send_task always makes, without declaring the queue first (a sixth
        # of a publish's CPU): kombu's Redis transport delivers to the queue's list by
        # its name, declared or not (the test publishes to a fresh Redis), and the
        # workers declare the queue they read.
        # Our arguments are IDs and counts: their repr is the log's argsrepr, without
        # Celery's saferepr walk (about a tenth of a publish's calls).
        celery.send_task(task, args=args, countdown=countdown, declare=_NO_DECLARE,
                         argsrepr=repr(args), kwargsrepr="{}")
    except BrokerError as exc:
        raise NotQueued("the job queue (Redis) cannot be reached; the job was not "
                        "started: check RELAYFLEET_BROKER_URL and try again") from exc


def send_after_commit(session: Session, task: str, *args: Any,
                      on_failure: Callable[[], None] | None = None,
                      required: bool = True) -> None:
    """Queue ``task(*args)`` when ``session`` commits; ``on_failure`` runs if it cannot,
    and then the commit raises :class:`NotQueued` unless the message was not ``required``."""
    session.info.setdefault(_PENDING, []).append(_Message(task, args, on_failure, required))


def commit(session: Session) -> None:
    """Commit ``session`` and send its messages; :class:`NotQueued` if a required one could
    not be sent (what was committed stays committed)."""
    session.info.pop(_FAILED, None)
    session.commit()
    failed: NotQueued | None = session.info.pop(_FAILED, None)
    if failed is not None:
        raise failed


@event.listens_for(Session, "after_commit")
def _send_pending(session: Session) -> None:
    messages: list[_Message] = session.info.pop(_PENDING, [])
    for message in messages:
        try:
            send(message.task, *message.args)
        except NotQueued as exc:
            if message.on_failure is not None:
                message.on_failure()
            if message.required:
                session.info.setdefault(_FAILED, exc)


@event.listens_for(Session, "after_rollback")
def _forget_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)
