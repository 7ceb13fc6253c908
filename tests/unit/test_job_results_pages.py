"""A job's results a page at a time, or only the hosts in one state: what a client reads
of a job too big to answer at once (100,000 hosts are about 200 MB of results)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update

from controller.db import db
from controller.models import JobHost
from tests.controller_client import Controller


def _job_with_two_failures(c: Controller) -> tuple[int, list[int]]:
    """A flush over five hosts, the second and fourth of them failed; (job id, host ids in
    target order)."""
    site = c.site(c.tenant("Acme"), "Leeds")
    hosts = sorted(c.host(site, f"pbx{n}")["id"] for n in range(1, 6))
    answer = c.post("/v1/jobs", {"action": "flush_queue", "target": {"sites": ["Leeds"]}})
    assert answer.status == 202, answer
    job_id = answer.json["id"]
    with c.app.app_context(), db.transaction() as session:
        session.execute(update(JobHost).where(
            JobHost.job_id == job_id, JobHost.host_id.in_([hosts[1], hosts[3]]))
            .values(status="failed", error="relay refused"))
    return job_id, hosts


def _pages(c: Controller, first: str) -> list[list[int]]:
    """Every page from ``first`` on, following results_next."""
    pages: list[list[int]] = []
    url: str | None = first
    while url is not None:
        doc: dict[str, Any] = c.ok("GET", url)
        pages.append([result["host_id"] for result in doc["results"]])
        url = doc["results_next"]
        assert len(pages) < 10, "results_next does not end"
    return pages


def test_pages_follow_the_target_order_to_the_end(controller: Controller) -> None:
    job_id, hosts = _job_with_two_failures(controller)
    assert _pages(controller, f"/v1/jobs/{job_id}?results_limit=2") == [
        hosts[0:2], hosts[2:4], hosts[4:5]]
    # a page that ends exactly at the last result says so (no empty page after it)
    assert _pages(controller, f"/v1/jobs/{job_id}?results_limit=5") == [hosts]


def test_only_the_hosts_in_one_state_page_by_page(controller: Controller) -> None:
    job_id, hosts = _job_with_two_failures(controller)
    failed = controller.ok("GET", f"/v1/jobs/{job_id}?host_status=failed")
    assert [r["host_id"] for r in failed["results"]] == [hosts[1], hosts[3]]
    assert {r["error"] for r in failed["results"]} == {"relay refused"}
    assert "results_next" not in failed  # not paged: every failed host at once
    assert _pages(controller, f"/v1/jobs/{job_id}?host_status=failed&results_limit=1") == [
        [hosts[1]], [hosts[3]]]
    # the counts stay the whole job's
    assert failed["counts"]["failed"] == 2 and failed["counts"]["total"] == 5


def test_without_paging_the_answer_is_as_it_was(controller: Controller) -> None:
    job_id, hosts = _job_with_two_failures(controller)
    doc = controller.ok("GET", f"/v1/jobs/{job_id}")
    assert [r["host_id"] for r in doc["results"]] == hosts and "results_next" not in doc
    assert "results" not in controller.ok("GET", f"/v1/jobs/{job_id}?results=false")


def test_a_bad_page_is_refused_saying_which_parameter(controller: Controller) -> None:
    job_id, _ = _job_with_two_failures(controller)
    for query, name in (("results_limit=0", "results_limit"),
                        ("results_limit=5001", "results_limit"),
                        ("results_after=-1", "results_after"),
                        ("host_status=broken", "host_status"),
                        ("results_limit=ten", "results_limit")):
        answer = controller.get(f"/v1/jobs/{job_id}?{query}")
        assert answer.status == 422, (query, answer)
        assert name in str(answer.json), (query, answer.json)
