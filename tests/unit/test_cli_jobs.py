"""The CLI's job side: relay parsing, targets, starting jobs against the real controller
app (in-process over WSGI), and following a job's documents (scripted answers: the
progress and exit-code logic is pure)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from controller.client.api import ApiClient
from controller.client.config import Connection
from controller.client.context import Cli
from controller.client.errors import UsageProblem
from controller.client.job_commands import parse_relay
from controller.client.main import cli
from controller.client.summaries import age_text, relay_text, summarize
from controller.client.targets import TargetChoice, build_target


def wsgi_cli(controller: Any, token: str | None = None) -> Cli:
    """CLI state whose API is the real controller app, in-process."""
    connection = Connection(api="http://controller", token=token or controller.admin,
                            source="test")
    return Cli(_api=ApiClient(connection, transport=httpx.WSGITransport(app=controller.app)))


def invoke(state: Cli, *args: str) -> Any:
    return CliRunner().invoke(cli, list(args), obj=state, catch_exceptions=False,
                              standalone_mode=False)


@pytest.mark.parametrize(("text", "expected"), [
    ("relay.lab.test:2525", ("relay.lab.test", 2525)),
    ("relay.lab.test", ("relay.lab.test", None)),
    ("[192.0.2.1]:587", ("[192.0.2.1]", 587)),
    ("[192.0.2.1]", ("[192.0.2.1]", None)),
])
def test_relay_and_port(text: str, expected: tuple[str, int | None]) -> None:
    assert parse_relay(text) == expected


@pytest.mark.parametrize("text", ["relay:0", "relay:99999", "relay:x", "[192.0.2.1", "[]:25",
                                  "[192.0.2.1]587", ":25"])
def test_bad_relays_are_usage_problems(text: str) -> None:
    with pytest.raises(UsageProblem):
        parse_relay(text)


def test_summaries_read_each_actions_answer() -> None:
    relay = {"host": "relay.example.net", "port": 587, "mx": False,
             "auth": {"username": "pbx"}, "tls": {"mode": "encrypt"},
             "masquerade": {"domain": "acme.fr"}}
    assert relay_text(relay) == "[relay.example.net]:587 tls=encrypt auth=pbx masquerade=acme.fr"
    assert relay_text(None) == "direct (no smarthost)"
    assert relay_text({"host": "[192.0.2.1]", "port": 25, "mx": False}) == "[192.0.2.1]"
    flushed = {"status": "succeeded", "data": {
        "before": 3, "after": 1, "deliveries": [{"outcome": "sent"}, {"outcome": "sent"}],
        "remaining": [{"reason": "Deferred: Connection timed out"}]}}
    assert summarize("flush_queue", flushed) == \
        "queue 3 → 1, 2 sent; still held: Deferred: Connection timed out"
    assert summarize("flush_queue", {"status": "unreachable", "error": "no route"}) == "no route"
    # A diagnose with failing checks ends failed with no error of its own.
    checks = {"status": "failed", "error": None, "data": {
        "checks": [{"name": "a", "ok": True}, {"name": "spf", "ok": False}]}}
    assert summarize("diagnose", checks) == "1 failing: spf"
    passing = {"status": "succeeded", "error": None, "data": {"checks": [{"name": "a",
                                                                          "ok": True}]}}
    assert summarize("diagnose", passing) == "all checks pass"
    dry = {"status": "succeeded", "data": {"dry_run": True, "diff": "--- a\n+++ b\n-x\n+y\n"}}
    assert summarize("set_smarthost", dry) == "would change (2 lines)"
    assert age_text(3 * 3600 + 12 * 60 + 5) == "3h 12m" and age_text(45) == "45s"


@pytest.fixture
def fleet(memory_controller: Any) -> Any:
    """Two tenants; acme has sites lyon (2 hosts, one tagged pbx) and paris (1 host)."""
    acme = memory_controller.tenant("acme")
    lyon = memory_controller.site(acme, "lyon")
    paris = memory_controller.site(acme, "paris")
    memory_controller.host(lyon, "pbx-lyon-1", tags=["pbx"])
    memory_controller.host(lyon, "mail-lyon-2")
    memory_controller.host(paris, "pbx-paris-1", tags=["pbx"])
    memory_controller.host(memory_controller.site(memory_controller.tenant("other"), "x"),
                           "pbx-other-1", tags=["pbx"])
    return memory_controller


def test_one_kind_goes_to_the_api_as_typed_and_several_intersect(fleet: Any) -> None:
    api = wsgi_cli(fleet).api
    assert build_target(TargetChoice(site=("lyon", "7")), api) == {"sites": ["lyon", 7]}
    assert build_target(TargetChoice(all_hosts=True), api) == {"all": True}
    both = build_target(TargetChoice(tenant=("acme",), tag=("pbx",)), api)
    names = {h["id"]: h["name"] for h in api.items("/v1/hosts")}
    assert sorted(names[i] for i in both["hosts"]) == ["pbx-lyon-1", "pbx-paris-1"]
    with pytest.raises(UsageProblem, match="no host matches"):
        build_target(TargetChoice(site=("paris",), host=("pbx-lyon-1",)), api)
    with pytest.raises(UsageProblem, match="say which hosts"):
        build_target(TargetChoice(), api)
    with pytest.raises(UsageProblem, match="cannot be combined"):
        build_target(TargetChoice(all_hosts=True, tag=("pbx",)), api)


def test_a_job_starts_with_an_idempotency_key_and_no_wait_prints_its_id(fleet: Any) -> None:
    state = wsgi_cli(fleet)
    result = invoke(state, "flush", "--site", "lyon", "--recipient", "boss@acme.fr",
                    "--concurrency", "3", "--no-wait")
    assert result.return_value == 0, result.output
    job_id = int(result.output.strip().splitlines()[0])
    job = fleet.ok("GET", f"/v1/jobs/{job_id}")
    assert job["action"] == "flush_queue" and job["counts"]["total"] == 2
    assert job["params"] == {"recipient": "boss@acme.fr", "queue_id": None, "sender": None,
                             "reset_host_status": True}
    assert job["options"]["concurrency"] == 3
    audit = fleet.ok("GET", "/v1/audit?action=POST%20/v1/jobs")["items"]
    assert audit, "the job's creation is audited"


def test_smarthost_set_sends_the_whole_relay_configuration(fleet: Any, tmp_path: Any) -> None:
    state = wsgi_cli(fleet)
    secret = tmp_path / "pw"
    secret.write_text("s3cret pass\n")
    result = invoke(state, "--json", "smarthost", "set", "relay.example.net:587",
                    "--tag", "pbx", "--auth-user", "pbx@acme.fr", "--password-file",
                    str(secret), "--tls", "verify", "--masquerade", "acme.fr", "--dry-run",
                    "--no-wait")
    assert result.return_value == 0, result.output
    accepted = json.loads(result.output)
    job = fleet.ok("GET", f"/v1/jobs/{accepted['id']}")
    assert job["params"]["auth"] == {"username": "pbx@acme.fr"}  # the password is not shown
    assert job["params"]["tls"]["mode"] == "verify"
    assert job["params"]["masquerade"] == {"domain": "acme.fr", "envelope": True}
    assert job["options"]["dry_run"] is True and job["counts"]["total"] == 3
    assert "s3cret" not in json.dumps(job)


def test_an_unknown_host_says_how_to_find_it(fleet: Any) -> None:
    state = wsgi_cli(fleet)
    with pytest.raises(Exception) as caught:
        invoke(state, "status", "--host", "pbx-lyon", "--no-wait")
    assert "no host named pbx-lyon in your tenants" in str(caught.value)
    assert getattr(caught.value, "hint", "") == "relayfleet hosts list --name lyon"
    assert getattr(caught.value, "exit_code", None) == 3


def test_a_viewer_cannot_start_a_job(fleet: Any) -> None:
    state = wsgi_cli(fleet, token=fleet.issue("viewer"))
    with pytest.raises(Exception) as caught:
        invoke(state, "flush", "--all", "--no-wait")
    assert "this needs a token with the operator role" in str(caught.value)
    assert getattr(caught.value, "exit_code", None) == 3


# -- following a job (scripted documents) ----------------------------------------------

def _result(host_id: int, host: str, status: str, error: str | None = None) -> dict[str, Any]:
    return {"host_id": host_id, "host": host, "status": status, "error": error,
            "changed": None, "attempts": 1, "steps": None, "started_at": None,
            "finished_at": None,
            "data": {"before": 1, "after": 0, "deliveries": [{"outcome": "sent"}],
                     "remaining": []} if status == "succeeded" else None}


def _job(status: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    counts = {k: 0 for k in ("pending", "running", "succeeded", "failed", "unreachable",
                             "skipped")}
    for r in results:
        counts[r["status"]] += 1
    return {"id": 9, "action": "flush_queue", "status": status, "options": {},
            "counts": {"total": len(results), **counts}, "results": results}


def scripted(documents: list[dict[str, Any]],
             on_get: Callable[[int], None] | None = None) -> tuple[Cli, list[str]]:
    """CLI state whose API answers GET /v1/jobs/9 with ``documents`` in turn."""
    calls: list[str] = []
    pages: Iterator[dict[str, Any]] = iter(documents)
    last: dict[str, Any] = {}

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}")
        if request.method == "POST" and request.url.path == "/v1/jobs/9/cancel":
            return httpx.Response(200, json={**last, "status": "running"})
        if on_get:
            on_get(len(calls))
        last.update(next(pages, last))
        return httpx.Response(200, json=last)

    connection = Connection(api="http://controller", token="t", source="test")
    return Cli(_api=ApiClient(connection, transport=httpx.MockTransport(handle))), calls


def test_watch_prints_failures_first_then_a_table_and_exits_1_when_partial() -> None:
    running = _job("running", [_result(1, "a-ok", "running"), _result(2, "b-cut", "pending")])
    done = _job("partial", [_result(1, "a-ok", "succeeded"),
                            _result(2, "b-cut", "unreachable", "connection refused")])
    state, _calls = scripted([running, done])
    result = invoke(state, "jobs", "watch", "9")
    assert result.return_value == 1
    lines = result.output.splitlines()
    cut = next(i for i, line in enumerate(lines) if line.startswith("b-cut: unreachable"))
    ok = next(i for i, line in enumerate(lines) if line.startswith("a-ok: succeeded"))
    assert cut < ok and "connection refused" in lines[cut]
    assert "job 9 flush_queue: partial" in result.output
    assert "relayfleet jobs retry 9" in result.output


def test_watch_exits_0_when_every_host_succeeded_and_json_is_the_document() -> None:
    done = _job("succeeded", [_result(1, "a", "succeeded")])
    state, _ = scripted([done])
    state.json_mode = True
    result = invoke(state, "jobs", "watch", "9")
    assert result.return_value == 0 and json.loads(result.output) == done


def test_ctrl_c_detaches_and_says_how_to_follow() -> None:
    running = _job("running", [_result(1, "a", "running")])

    def interrupt(calls: int) -> None:
        if calls >= 2:
            raise KeyboardInterrupt

    state, calls = scripted([running, running], on_get=interrupt)
    result = invoke(state, "jobs", "watch", "9")
    assert result.return_value == 130
    assert "detached: job 9 keeps running" in result.output
    assert "relayfleet jobs watch 9" in result.output
    assert "POST /v1/jobs/9/cancel" not in calls


def test_ctrl_c_cancels_when_asked() -> None:
    running = _job("running", [_result(1, "a", "running"), _result(2, "b", "pending")])
    cancelled = _job("cancelled", [_result(1, "a", "succeeded"),
                                   _result(2, "b", "skipped", "cancelled before it started")])

    def interrupt(calls: int) -> None:
        if calls == 2:
            raise KeyboardInterrupt

    state, calls = scripted([running, running, cancelled], on_get=interrupt)
    result = invoke(state, "jobs", "watch", "9", "--cancel-on-interrupt")
    assert "POST /v1/jobs/9/cancel" in calls
    assert result.return_value == 1 and "job 9 flush_queue: cancelled" in result.output


def test_fleet_out_of_sync_asks_the_api_for_exactly_those_hosts(fleet: Any) -> None:
    from controller.db import db
    from controller.models import Host

    with fleet.app.app_context():
        host = db.session.query(Host).filter_by(name="mail-lyon-2").one()
        host.config_in_sync = False
        db.session.commit()
    answer = fleet.ok("GET", "/v1/fleet?out_of_sync=true")
    assert [item["name"] for item in answer["items"]] == ["mail-lyon-2"]
    state = wsgi_cli(fleet)
    state.json_mode = True
    result = invoke(state, "fleet", "--out-of-sync")
    assert [item["name"] for item in json.loads(result.output)["items"]] == ["mail-lyon-2"]
