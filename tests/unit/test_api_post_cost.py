"""What ``POST /v1/jobs`` does for its CPU budget: a site or tenant target is resolved, with
its hosts, by one statement that keeps every check (scope, deleted hosts, unknown and
ambiguous names, an empty target), and the lanes' messages are the ones Celery makes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event

from controller.db import db
from tests.controller_client import Controller

FLUSH = "flush_queue"


@pytest.fixture
def fleet(controller: Controller) -> dict[str, Any]:
    """Acme: Leeds (two live hosts, one deleted) and Empty (its one host deleted); Beta:
    another Leeds (one host)."""
    c = controller
    acme, beta = c.tenant("Acme"), c.tenant("Beta")
    leeds, empty, beta_leeds = c.site(acme, "Leeds"), c.site(acme, "Empty"), c.site(beta, "Leeds")
    live = [c.host(leeds, name)["id"] for name in ("pbx2", "pbx1")]
    for site in (leeds, empty):
        gone = c.host(site, "gone")["id"]
        assert c.call("DELETE", f"/v1/hosts/{gone}").status == 204
    beta_host = c.host(beta_leeds, "pbx9")["id"]
    return {"c": c, "acme": acme, "beta": beta, "leeds": leeds, "empty": empty,
            "beta_leeds": beta_leeds, "live": sorted(live), "beta_host": beta_host,
            "acme_op": c.issue("operator", acme)}


def _job(c: Controller, target: dict[str, Any], token: str | None = None) -> Any:
    return c.post("/v1/jobs", {"action": FLUSH, "target": target}, token)


def _hosts_of(c: Controller, answer: Any) -> list[int]:
    assert answer.status == 202, answer
    doc = c.ok("GET", f"/v1/jobs/{answer.json['id']}")
    return [result["host_id"] for result in doc["results"]]


def test_a_site_target_is_its_live_hosts_in_the_tokens_scope(fleet: dict[str, Any]) -> None:
    c, op = fleet["c"], fleet["acme_op"]
    # by name or id, the deleted host left out, ordered by id
    assert _hosts_of(c, _job(c, {"sites": ["Leeds"]}, op)) == fleet["live"]
    assert _hosts_of(c, _job(c, {"sites": [fleet["leeds"]]}, op)) == fleet["live"]
    # the same site by id and by name is named once; Beta's Leeds is not Acme's
    assert _hosts_of(c, _job(c, {"sites": [fleet["leeds"], "Leeds"]}, op)) == fleet["live"]
    # another tenant's site does not exist for this token, by id or by name
    refused = _job(c, {"sites": [fleet["beta_leeds"], "Nowhere"]}, op)
    assert refused.status == 422
    assert f"not found: {fleet['beta_leeds']}, Nowhere" in refused.json["message"]
    # a site whose only host was deleted matches no host
    empty = _job(c, {"sites": ["Empty"]}, op)
    assert empty.status == 422 and "matches no host" in empty.json["message"]
    # with another site that has hosts, the empty one adds none
    assert _hosts_of(c, _job(c, {"sites": ["Empty", fleet["leeds"]]}, op)) == fleet["live"]


def test_a_site_name_two_tenants_use_is_ambiguous_for_the_msp(fleet: dict[str, Any]) -> None:
    c = fleet["c"]
    answer = _job(c, {"sites": ["Leeds"]})
    assert answer.status == 422
    ids = sorted((fleet["leeds"], fleet["beta_leeds"]))
    assert f"'Leeds' names 2 sites (ids {ids[0]}, {ids[1]}): give the id" in (
        answer.json["message"])
    assert _hosts_of(c, _job(c, {"sites": [fleet["beta_leeds"]]})) == [fleet["beta_host"]]


def test_a_tenant_target_is_its_hosts_and_only_ones_own(fleet: dict[str, Any]) -> None:
    c, op = fleet["c"], fleet["acme_op"]
    assert _hosts_of(c, _job(c, {"tenants": ["Acme"]}, op)) == fleet["live"]
    assert _hosts_of(c, _job(c, {"tenants": ["Acme", "Beta"]})) == sorted(
        [*fleet["live"], fleet["beta_host"]])
    for other in ("Beta", fleet["beta"]):
        refused = _job(c, {"tenants": [other]}, op)
        assert refused.status == 422 and f"not found: {other}" in refused.json["message"]


@pytest.fixture
def statements(fleet: dict[str, Any]) -> Iterator[list[str]]:
    """The SQL the controller sends while the test runs."""
    sent: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(statement)

    with fleet["c"].app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", note)
    yield sent
    event.remove(engine, "before_cursor_execute", note)


def test_a_site_target_costs_one_statement(fleet: dict[str, Any],
                                           statements: list[str]) -> None:
    c = fleet["c"]
    assert _job(c, {"sites": ["Leeds"]}, fleet["acme_op"]).status == 202
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")
             and ("FROM sites" in s or "FROM hosts" in s)]
    assert len(reads) == 1, reads


def test_a_lane_published_to_a_fresh_redis_waits_in_the_queue(
        memory_controller: Controller, redis_server: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A lane is published without declaring its queue (a sixth of a publish's CPU): on a
    Redis no worker has ever declared anything in, the message must still be in the queue
    the workers read, whole, and not dropped for want of a binding."""
    import redis

    from controller import dispatch
    from controller.celery_app import QUEUE

    redis_server.flush()
    monkeypatch.setenv("RELAYFLEET_BROKER_URL", redis_server.url)
    app = Controller.create().app
    with app.app_context():
        dispatch.send(dispatch.RUN_LANE, 7, 1)
    client = redis.Redis.from_url(redis_server.url)
    assert client.llen(QUEUE) == 1, sorted(client.keys("*"))
    with app.extensions["celery"].connection_for_read() as conn:
        message = conn.default_channel.basic_get(QUEUE, no_ack=True)
    assert message is not None and message.headers["task"] == dispatch.RUN_LANE
    assert message.decode()[0] == [7, 1]
