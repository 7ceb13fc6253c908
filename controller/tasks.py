"""Celery tasks: thin glue between the broker and the job engine.

``run_lane`` runs one lane of a job (:mod:`controller.lanes`), ``sweep`` gives silent jobs a
lane back, ``send_callback`` delivers a finished job's document (:mod:`controller.callbacks`).
Every task takes ids, re-reads state, and is safe to run twice: ``acks_late`` with
``reject_on_worker_lost`` hands a dead worker's task to another.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import shared_task

from controller import alerts, callbacks, dispatch, inbound, lanes, ledger, policy, schedules

log = logging.getLogger("relayfleet.worker")

_ONCE_AT_LEAST = {"acks_late": True, "reject_on_worker_lost": True, "ignore_result": True}
#: beat's fleet-health steps, in order: start what is due (status collections and
#: schedules), judge the fleet's state (alerts), then act on drift where policies say so
TICK_STEPS: tuple[tuple[str, Callable[..., None]], ...] = (
    ("schedules", schedules.tick), ("alerts", alerts.tick), ("remediation", policy.tick))


@shared_task(name=dispatch.RUN_LANE, **_ONCE_AT_LEAST)
def run_lane(job_id: int, lane: int, width: int | None = None) -> None:
    """Run one lane of a job, ``width`` hosts at once (this worker's setting if absent)."""
    lanes.Lane(job_id, lane, width=width).run()


@shared_task(name=dispatch.SWEEP, **_ONCE_AT_LEAST)
def sweep() -> None:
    """Periodic (beat): give a lane back to unfinished jobs whose lanes went silent, queue
    callbacks that never reached the queue, forget expired Idempotency-Keys, and last,
    on its own (its failing stops nothing before it), forget inbound requests past their
    replay window."""
    for job_id in lanes.sweep(lanes.app_database(), lanes.app_settings()):
        log.warning("job %s: no live lane (a worker died or a message was lost); "
                    "queueing one", job_id, extra={"job_id": job_id})
        dispatch.send(dispatch.RUN_LANE, job_id, 0)
    database = lanes.app_database()

    def still_not_queued(job_id: int) -> Callable[[], None]:
        def note() -> None:
            with database.transaction() as own:
                ledger.note_callback(own, job_id, ledger.CALLBACK_NOT_QUEUED)
        return note

    # Callbacks whose message never reached the queue (finish_job noted it): queue them
    # now. Marked first, so that the next sweep does not queue one a second time.
    with database.transaction() as session:
        for job_id in ledger.callbacks_not_queued(session):
            log.warning("job %s: its callback never reached the queue; queueing it", job_id,
                        extra={"job_id": job_id})
            ledger.note_callback(session, job_id, "queued again by the sweeper")
            dispatch.send_after_commit(session, dispatch.SEND_CALLBACK, job_id,
                                       on_failure=still_not_queued(job_id), required=False)
    try:
        inbound.purge_deliveries(database, lanes.app_settings())  # replays past the window
    except Exception:
        log.exception("sweep: forgetting old inbound requests failed; the next sweep tries "
                      "again")


@shared_task(name=dispatch.SEND_CALLBACK, bind=True, max_retries=callbacks.CALLBACK_RETRIES,
             **_ONCE_AT_LEAST)
def send_callback(self: Any, job_id: int) -> None:
    """POST the final job document to its ``callback_url``, signed; retry with backoff."""
    retries = self.request.retries
    delivered = callbacks.deliver(lanes.app_database(), lanes.app_settings(), job_id,
                                  attempt=retries + 1)
    if not delivered and retries < callbacks.CALLBACK_RETRIES:
        raise self.retry(countdown=callbacks.retry_delay_s(retries))


@shared_task(name=dispatch.TICK, **_ONCE_AT_LEAST)
def tick() -> None:
    """Periodic (beat): start due status collections and schedules, fire and resolve
    alerts, remediate drifted hosts whose policy says so. Each step stands alone: one
    failing does not stop the others."""
    database, settings = lanes.app_database(), lanes.app_settings()
    for name, step in TICK_STEPS:
        try:
            step(database, settings)
        except Exception:
            log.exception("fleet tick: the %s step failed; the next tick tries again", name)


@shared_task(name=dispatch.SEND_NOTICE, bind=True, max_retries=alerts.NOTICE_RETRIES,
             **_ONCE_AT_LEAST)
def send_notice(self: Any, notice_id: int) -> None:
    """Deliver one alert notice to its channel; retry with backoff."""
    retries = self.request.retries
    delivered = alerts.deliver(lanes.app_database(), lanes.app_settings(), notice_id,
                               attempt=retries + 1)
    if not delivered and retries < alerts.NOTICE_RETRIES:
        raise self.retry(countdown=callbacks.retry_delay_s(retries))
