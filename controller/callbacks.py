"""Callbacks: the final job document, signed, POSTed to the job's ``callback_url``."""

from __future__ import annotations

import json
import logging
import time

from sqlalchemy.orm import Session

from controller import ledger
from controller.config import Settings
from controller.crypto import SecretBox, derive_key, sign_callback
from controller.db import Database
from controller.egress import DeadlineExceeded, EgressError, HttpClient
from controller.inventory import tenant_callback_key
from controller.jobs import report
from controller.models import Job
from shared.errors import ConfigError

#: attempts after the first (2 s doubling: the last waits 256 s)
CALLBACK_RETRIES = 8
#: one attempt, connection to last byte: a receiver that drips cannot hold a worker
CALLBACK_DEADLINE_S = 10.0
#: how much of a receiver's answer is read (only its status matters)
CALLBACK_ANSWER_BYTES = 64 * 1024

log = logging.getLogger("relayfleet.callbacks")


def callback_key(settings: Settings) -> bytes:
    """The controller-wide key: it signs the callbacks of jobs that belong to no tenant
    (made with MSP-wide tokens); a tenant's jobs are signed with the tenant's own key."""
    if settings.callback_secret:
        return settings.callback_secret.encode()
    return derive_key(settings.secret_key, "callbacks v1").hex().encode()


def job_callback_key(session: Session, settings: Settings, job: Job) -> bytes:
    """The key ``job``'s callback is signed with: its tenant's, so that no tenant can get
    a signature another tenant's webhook would accept."""
    if job.tenant_id is None:
        return callback_key(settings)
    box = SecretBox(settings.secret_key, settings.old_secret_keys)
    key = tenant_callback_key(session, box, job.tenant_id)
    if key is None:  # the tenant went between the job's read and this one
        raise ConfigError(f"job {job.id}: its tenant {job.tenant_id} no longer exists")
    return key


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
        key = job_callback_key(session, settings, job)
    stamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "User-Agent": "relayfleet-controller",
               "X-Relayfleet-Event": "job.finished", "X-Relayfleet-Timestamp": stamp,
               "X-Relayfleet-Signature": sign_callback(key, stamp, body)}
    delivered, outcome = post(settings, url, body, headers)
    state = (f"delivered on attempt {attempt} ({outcome})" if delivered
             else f"attempt {attempt} failed ({outcome})")
    if not delivered and attempt > CALLBACK_RETRIES:
        state = f"gave up after {attempt} attempts (last: {outcome})"
    with database.transaction() as session:
        ledger.note_callback(session, job_id, state)
    return delivered


def post(settings: Settings, url: str, body: bytes,
         headers: dict[str, str]) -> tuple[bool, str]:
    """POST ``body`` to ``url`` under the egress policy; whether a 2xx came back, and what
    the tenant may see of the outcome (a status, "refused by egress policy",
    "unreachable" or "timed out" — never a socket error). Job callbacks and alert
    channels both post through it; its log names the URL's host only."""
    client = HttpClient(settings.egress_policy)
    try:
        answer = client.request("POST", url, body=body, headers=headers,
                                deadline_s=CALLBACK_DEADLINE_S,
                                max_body=CALLBACK_ANSWER_BYTES, truncate=True)
    except DeadlineExceeded:
        return False, f"timed out after {CALLBACK_DEADLINE_S:g} s"
    except EgressError as exc:
        # the host only: the path of a Slack or Teams incoming webhook is its key
        host = url.partition("://")[2].partition("/")[0].rpartition("@")[2]
        log.info("POST to %s/…: %s", host, exc)
        return False, str(exc)
    return 200 <= answer.status < 300, f"HTTP {answer.status}"
