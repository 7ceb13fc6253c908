"""Callbacks: the final job document, signed, POSTed to the job's ``callback_url``."""

from __future__ import annotations

import json
import time

import requests

from controller import ledger
from controller.config import Settings
from controller.crypto import derive_key, sign_callback
from controller.db import Database
from controller.jobs import report
from controller.models import Job

#: attempts after the first (2 s doubling: the last waits 256 s)
CALLBACK_RETRIES = 8


def callback_key(settings: Settings) -> bytes:
    """The key callbacks are signed with."""
    if settings.callback_secret:
        return settings.callback_secret.encode()
    return derive_key(settings.secret_key, "callbacks v1").hex().encode()


def retry_delay_s(retries: int) -> int:
    """How long to wait before the next attempt, after ``retries`` failed ones."""
    return int(min(600, 2 * 2 ** retries))


def deliver(database: Database, settings: Settings, job_id: int, attempt: int) -> bool:
    """POST the job's document (attempt ``attempt`` of 1 + :data:`CALLBACK_RETRIES`),
    note how it went on the job, and say whether it was delivered."""
    from controller.schemas import JobSchema

    with database.transaction() as session:
        job = session.get(Job, job_id)
        if job is None or job.callback_url is None:
            return True
        body = json.dumps(JobSchema().dump(report(session, job))).encode()
        url = job.callback_url
    stamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "User-Agent": "relayfleet-controller",
               "X-Relayfleet-Event": "job.finished", "X-Relayfleet-Timestamp": stamp,
               "X-Relayfleet-Signature": sign_callback(callback_key(settings), stamp, body)}
    try:
        answer = requests.post(url, data=body, headers=headers, timeout=10,
                               allow_redirects=False)
        outcome = f"HTTP {answer.status_code}"
        delivered = 200 <= answer.status_code < 300
    except requests.exceptions.RequestException as exc:
        outcome, delivered = type(exc).__name__, False
    state = (f"delivered on attempt {attempt} ({outcome})" if delivered
             else f"attempt {attempt} failed ({outcome})")
    if not delivered and attempt > CALLBACK_RETRIES:
        state = f"gave up after {attempt} attempts (last: {outcome})"
    with database.transaction() as session:
        ledger.note_callback(session, job_id, state)
    return delivered
