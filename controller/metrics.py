"""Prometheus metrics: job and host-result counts read from the database at scrape time
(so every API and worker process agrees), plus the API's HTTP request figures.

Under ``relayfleet-controller serve`` the HTTP figures are those of every gunicorn worker
added up: prometheus_client's multiprocess mode, set up by :mod:`controller.gunicorn_conf`
(``PROMETHEUS_MULTIPROC_DIR``, read when this module is imported). Without it (the app in
one process, e.g. under a test client) they are this process's own.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import func, select

from controller.auth import Principal
from controller.db import db
from controller.inventory import fleet_summary
from controller.models import Job, JobHost

#: where every API process keeps its figures (multiprocess mode), or None: this process only
MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
HTTP_REGISTRY = CollectorRegistry()
REQUESTS = Counter("relayfleet_http_requests", "API requests answered",
                   ["method", "route", "status"], registry=HTTP_REGISTRY)
LATENCY = Histogram("relayfleet_http_request_duration_seconds", "API request latency",
                    ["route"], registry=HTTP_REGISTRY,
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))


def render(who: Principal) -> bytes:
    """The metrics text for a principal (a tenant-scoped token sees only its tenant)."""
    session = db.session
    jobs = GaugeMetricFamily("relayfleet_jobs", "Jobs by action and status",
                             labels=["action", "status"])
    stmt = select(Job.action, Job.status, func.count()).group_by(Job.action, Job.status)
    if who.tenant_id is not None:
        stmt = stmt.where(Job.tenant_id == who.tenant_id)
    for action, status, number in session.execute(stmt):
        jobs.add_metric([action, status], number)
    results = GaugeMetricFamily("relayfleet_host_results", "Per-host job results by action "
                                "and status", labels=["action", "status"])
    stmt2 = (select(Job.action, JobHost.status, func.count()).join(Job, Job.id == JobHost.job_id)
             .group_by(Job.action, JobHost.status))
    if who.tenant_id is not None:
        stmt2 = stmt2.where(Job.tenant_id == who.tenant_id)
    for action, status, number in session.execute(stmt2):
        results.add_metric([action, status], number)
    fleet = GaugeMetricFamily("relayfleet_fleet", "Fleet totals from the last known state",
                              labels=["measure"])
    for key, value in fleet_summary(session, who).items():
        fleet.add_metric([key], value)

    class _Scrape:
        def collect(self) -> list[GaugeMetricFamily]:
            return [jobs, results, fleet]

    registry = CollectorRegistry()
    registry.register(_Scrape())
    # The HTTP figures cover every tenant's calls: MSP-wide tokens only.
    http = http_figures() if who.tenant_id is None else b""
    return generate_latest(registry) + http


def http_figures() -> bytes:
    """The API's HTTP figures: all its processes' added up in multiprocess mode."""
    if MULTIPROCESS_DIR is None:
        return generate_latest(HTTP_REGISTRY)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=MULTIPROCESS_DIR)  # type: ignore[no-untyped-call]
    return generate_latest(registry)
