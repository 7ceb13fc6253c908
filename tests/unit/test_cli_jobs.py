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
from controller.client.errors import ApiRefused, ApiUnreachable, UsageProblem
from controller.client.job_commands import parse_relay
from controller.client.main import cli
from controller.client.summaries import age_text, relay_text, summarize
from controller.client.targets import TargetChoice, build_target
from controller.client.watch import UNIT_STATES


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


# -- names shared by several sites or hosts, and numbers that are names ---------------------

@pytest.fixture
def twins(memory_controller: Any) -> dict[str, Any]:
    """acme and globex both have a site lyon, each with a host pbx-1; acme's lyon also has
    pbx-2."""
    acme, globex = memory_controller.tenant("acme"), memory_controller.tenant("globex")
    sites = {"acme": memory_controller.site(acme, "lyon"),
             "globex": memory_controller.site(globex, "lyon")}
    hosts = {"acme": memory_controller.host(sites["acme"], "pbx-1")["id"],
             "globex": memory_controller.host(sites["globex"], "pbx-1")["id"],
             "acme2": memory_controller.host(sites["acme"], "pbx-2")["id"]}
    return {"controller": memory_controller, "sites": sites, "hosts": hosts, "acme": acme}


def test_a_site_or_host_name_several_share_is_refused_not_targeted_twice(
        twins: dict[str, Any]) -> None:
    controller, sites, hosts = twins["controller"], twins["sites"], twins["hosts"]
    ids = sorted(sites.values())
    answer = controller.post("/v1/jobs", {"action": "flush_queue",
                                          "target": {"sites": ["lyon"]}})
    assert answer.status == 422, answer
    assert answer.json["errors"]["target.sites"] == [
        f"'lyon' names 2 sites (ids {ids[0]}, {ids[1]}): give the id"]
    state = wsgi_cli(controller)
    with pytest.raises(ApiRefused) as refused:
        invoke(state, "flush", "--site", "lyon", "--no-wait")
    assert refused.value.message == f"--site 'lyon' names 2 sites (ids {ids[0]}, {ids[1]})"
    assert f"--site id:{ids[0]}" in str(refused.value.hint)
    assert refused.value.exit_code == 3
    with pytest.raises(ApiRefused, match="'pbx-1' names 2 hosts"):
        invoke(state, "flush", "--host", "pbx-1", "--no-wait")
    # several kinds: the name is looked up within the others, and refused if still shared
    with pytest.raises(UsageProblem, match="'lyon' names 2 sites"):
        invoke(state, "flush", "--site", "lyon", "--host", "pbx-2", "--no-wait")
    assert controller.ok("GET", "/v1/jobs")["total"] == 0
    narrowed = invoke(state, "flush", "--tenant", "acme", "--site", "lyon", "--no-wait")
    job = fleet_job(controller, narrowed.stdout)
    assert sorted(r["host_id"] for r in job["results"]) == sorted(
        [hosts["acme"], hosts["acme2"]])
    one = invoke(state, "flush", "--tenant", "acme", "--host", "pbx-1", "--no-wait")
    assert [r["host_id"] for r in fleet_job(controller, one.stdout)["results"]] == [
        hosts["acme"]]
    by_id = invoke(state, "flush", "--site", f"id:{sites['globex']}", "--no-wait")
    assert [r["host_id"] for r in fleet_job(controller, by_id.stdout)["results"]] == [
        hosts["globex"]]


def fleet_job(controller: Any, output: str) -> dict[str, Any]:
    """The job whose id a --no-wait run printed."""
    job: dict[str, Any] = controller.ok("GET", f"/v1/jobs/{int(output.strip())}")
    return job


def test_a_number_that_is_also_a_name_is_refused_and_id_or_name_say_which(
        twins: dict[str, Any]) -> None:
    controller = twins["controller"]
    numbered = controller.site(twins["acme"], "1")
    host_in_numbered = controller.host(numbered, "pbx-9")["id"]
    state = wsgi_cli(controller)
    api = state.api
    with pytest.raises(UsageProblem, match="'1' could be site id 1 or the site named '1'") as \
            caught:
        build_target(TargetChoice(site=("1",)), api)
    assert caught.value.hint == "say which: id:1 or name:1"
    assert build_target(TargetChoice(site=("name:1",)), api) == {"sites": ["1"]}
    assert build_target(TargetChoice(site=("id:1",)), api) == {"sites": [1]}
    assert build_target(TargetChoice(host=(str(host_in_numbered),)), api) == {
        "hosts": [host_in_numbered]}
    named_one = invoke(state, "flush", "--site", "name:1", "--no-wait")
    assert [r["host_id"] for r in fleet_job(controller, named_one.stdout)["results"]] == [
        host_in_numbered]
    with pytest.raises(UsageProblem, match="id: takes a number"):
        build_target(TargetChoice(host=("id:x",)), api)


def test_unicode_digits_are_a_name_not_a_crash(twins: dict[str, Any]) -> None:
    state = wsgi_cli(twins["controller"])
    assert build_target(TargetChoice(host=("²",)), state.api) == {"hosts": ["²"]}
    with pytest.raises(ApiRefused) as refused:  # the API refuses the name: exit 3
        invoke(state, "flush", "--host", "²", "--no-wait")
    assert refused.value.exit_code == 3


# -- keyed POSTs: busy keys, lost answers, retry ---------------------------------------------

@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The client's back-off waits, recorded instead of slept."""
    waits: list[float] = []
    monkeypatch.setattr("controller.client.api.time.sleep", waits.append)
    return waits


def mock_cli(handle: Callable[[httpx.Request], httpx.Response],
             api: str = "http://controller") -> Cli:
    """CLI state whose API answers with ``handle``."""
    connection = Connection(api=api, token="t", source="test")
    return Cli(_api=ApiClient(connection, transport=httpx.MockTransport(handle)))


ACCEPTED = {"id": 9, "status": "queued", "total": 1,
            "links": {"self": "/v1/jobs/9", "cancel": "/v1/jobs/9/cancel",
                      "retry": "/v1/jobs/9/retry"}}
BUSY = {"code": 409, "status": "Conflict", "message": "a request with this Idempotency-Key is "
        "still being handled; retry in a moment"}


def test_a_keyed_post_the_controller_is_still_handling_is_asked_again(
        no_sleep: list[float]) -> None:
    keys: list[str | None] = []

    def handle(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers.get("Idempotency-Key"))
        return httpx.Response(409 if len(keys) <= 2 else 202, json=BUSY if len(keys) <= 2
                              else ACCEPTED)

    result = invoke(mock_cli(handle), "flush", "--host", "id:1", "--no-wait")
    assert result.return_value == 0 and result.stdout.strip() == "9"
    assert len(keys) == 3 and len(set(keys)) == 1 and keys[0]
    assert no_sleep == [0.5, 1.0]


def test_a_conflict_that_is_not_a_busy_key_is_not_asked_again(no_sleep: list[float]) -> None:
    calls: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(409, json={"code": 409, "status": "Conflict",
                                         "message": "site 3 already has a host named x"})

    with pytest.raises(ApiRefused, match="already has a host"):
        mock_cli(handle).api.post("/v1/hosts", {}, idempotency_key="k")
    assert calls == ["/v1/hosts"] and no_sleep == []


def test_a_keyed_post_without_an_answer_says_the_job_may_have_started(
        no_sleep: list[float]) -> None:
    sent: list[str] = []

    def lost(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers["Idempotency-Key"])
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(ApiUnreachable) as caught:
        invoke(mock_cli(lost), "flush", "--host", "id:1", "--no-wait")
    assert "the job may have started" in caught.value.message
    assert "unreachable" not in caught.value.message
    assert caught.value.hint == "see: relayfleet jobs list --limit 5"
    assert len(sent) == 4 and len(set(sent)) == 1  # 3 retries under the one key

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(ApiUnreachable) as never:
        invoke(mock_cli(refused), "flush", "--host", "id:1", "--no-wait")
    assert never.value.message.startswith("controller unreachable at http://controller")


def _finish_with_a_failure(controller: Any, job_id: int) -> None:
    """Make a queued job end partial: its first host failed, the others succeeded."""
    from controller.db import db
    from controller.models import Job, JobHost

    with controller.app.app_context():
        units = db.session.query(JobHost).filter_by(job_id=job_id).order_by(JobHost.id).all()
        for index, unit in enumerate(units):
            unit.status = "failed" if index == 0 else "succeeded"
            unit.error = "relay refused" if index == 0 else None
        db.session.get_one(Job, job_id).status = "partial"
        db.session.commit()


def test_jobs_show_status_lists_only_the_hosts_in_that_state(fleet: Any) -> None:
    job = fleet.start_job({"action": "flush_queue", "target": {"sites": ["lyon"]}})
    _finish_with_a_failure(fleet, job)
    state = wsgi_cli(fleet)
    failed = invoke(state, "jobs", "show", str(job), "--status", "failed")
    assert failed.return_value == 1, failed.output  # the job's exit code: partial
    assert "relay refused" in failed.output and "succeeded  " not in failed.output
    assert "1 succeeded, 1 failed" in failed.output  # the counts: the whole job's
    every = invoke(state, "jobs", "show", str(job))
    assert "relay refused" in every.output and "succeeded" in every.output
    refused = CliRunner().invoke(cli, ["jobs", "show", str(job), "--status", "lost"],
                                 obj=state)
    assert refused.exit_code == 2 and "'lost' is not one of" in refused.output
    from controller.ledger import UnitState

    assert list(UNIT_STATES) == [s.value for s in UnitState]  # the CLI's list is the API's


class Recording(httpx.BaseTransport):
    """A transport that passes requests on and keeps them."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.inner.handle_request(request)


def test_retry_takes_an_idempotency_key_and_the_cli_sends_one(fleet: Any) -> None:
    job = fleet.start_job({"action": "flush_queue", "target": {"sites": ["lyon"]}})
    _finish_with_a_failure(fleet, job)
    first = fleet.post(f"/v1/jobs/{job}/retry", headers={"Idempotency-Key": "retry-1"})
    again = fleet.post(f"/v1/jobs/{job}/retry", headers={"Idempotency-Key": "retry-1"})
    assert first.status == again.status == 202, (first, again)
    assert first.json["id"] == again.json["id"]
    assert fleet.ok("GET", "/v1/jobs")["total"] == 2
    retried = fleet.ok("GET", f"/v1/jobs/{first.json['id']}")
    assert retried["counts"]["total"] == 1 and retried["retry_of"] == job
    recording = Recording(httpx.WSGITransport(app=fleet.app))
    state = Cli(_api=ApiClient(Connection(api="http://controller", token=fleet.admin,
                                          source="test"), transport=recording))
    result = invoke(state, "jobs", "retry", str(job), "--no-wait")
    assert result.return_value == 0
    posted = [r for r in recording.requests if r.method == "POST"]
    assert posted and posted[0].headers.get("Idempotency-Key", "").startswith("relayfleet-cli-")
    assert fleet.ok("GET", "/v1/jobs")["total"] == 3


# -- Ctrl-C while the job's POST is out, and before the first look ----------------------------

def _interrupted_post(replay: Callable[[httpx.Request], httpx.Response],
                      documents: list[dict[str, Any]] | None = None,
                      ) -> tuple[Cli, list[str]]:
    """The first POST /v1/jobs is interrupted by Ctrl-C; ``replay`` answers the next."""
    calls: list[str] = []
    keys: list[str] = []
    pages = iter(documents or [])

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}")
        if request.url.path == "/v1/jobs":
            keys.append(request.headers["Idempotency-Key"])
            assert len(set(keys)) == 1, "the replay reuses the key"
            if len(keys) == 1:
                raise KeyboardInterrupt
            return replay(request)
        if request.url.path == "/v1/jobs/9/cancel":
            return httpx.Response(200, json=_job("running", [_result(1, "a", "running")]))
        return httpx.Response(200, json=next(pages))

    return mock_cli(handle), calls


def test_ctrl_c_during_the_post_learns_the_job_and_detaches() -> None:
    state, calls = _interrupted_post(lambda _: httpx.Response(202, json=ACCEPTED))
    result = invoke(state, "-q", "flush", "--host", "id:1")
    assert result.return_value == 130
    assert "detached: job 9 keeps running" in result.stderr  # -q says it too
    assert "relayfleet jobs watch 9" in result.stderr
    assert calls == ["POST /v1/jobs", "POST /v1/jobs"]


def test_ctrl_c_during_the_post_cancels_when_asked() -> None:
    cancelled = _job("cancelled", [_result(1, "a", "skipped", "cancelled before it started")])
    state, calls = _interrupted_post(lambda _: httpx.Response(202, json=ACCEPTED), [cancelled])
    result = invoke(state, "flush", "--host", "id:1", "--cancel-on-interrupt")
    assert "POST /v1/jobs/9/cancel" in calls
    assert result.return_value == 1 and "job 9 flush_queue: cancelled" in result.output


def test_ctrl_c_during_the_post_without_an_answer_says_where_to_look(
        no_sleep: list[float]) -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    state, _ = _interrupted_post(refused)
    result = invoke(state, "flush", "--host", "id:1")
    assert result.return_value == 130
    assert "the job may have started; see: relayfleet jobs list --limit 5" in result.stderr
    # a first POST still being handled is asked after only briefly
    state, calls = _interrupted_post(lambda _: httpx.Response(409, json=BUSY))
    result = invoke(state, "flush", "--host", "id:1")
    assert result.return_value == 130 and "the job may have started" in result.stderr
    assert calls == ["POST /v1/jobs"] * 5 and no_sleep == [0.5, 1.0, 2.0]


def test_ctrl_c_before_the_first_look_at_the_job_detaches() -> None:
    running = _job("running", [_result(1, "a", "running")])

    def interrupt(calls: int) -> None:
        if calls == 1:
            raise KeyboardInterrupt

    state, _ = scripted([running], on_get=interrupt)
    result = invoke(state, "jobs", "watch", "9")
    assert result.return_value == 130 and "relayfleet jobs watch 9" in result.stderr


# -- what cannot work says why, at once ------------------------------------------------------

def test_a_url_without_a_scheme_is_a_usage_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RELAYFLEET_API_URL", "RELAYFLEET_TOKEN", "RELAYFLEET_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UsageProblem, match="is not a controller URL") as caught:
        Cli(api_url="relayfleet.example.net", token="t").connection()
    assert caught.value.exit_code == 2
    assert caught.value.hint == "e.g. --api https://relayfleet.example.net"


def test_hopeless_transport_failures_are_not_retried(no_sleep: list[float]) -> None:
    calls: list[str] = []

    def untrusted(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        raise httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
                                 "self-signed certificate", request=request)

    with pytest.raises(ApiUnreachable) as caught:
        mock_cli(untrusted, "https://controller").api.get("/v1/whoami")
    assert len(calls) == 1 and no_sleep == []
    assert "--ca-file" in str(caught.value.hint) and "serve" not in str(caught.value.hint)

    def odd(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        raise httpx.UnsupportedProtocol("Request URL has an unsupported protocol 'ftp://'",
                                        request=request)

    with pytest.raises(ApiUnreachable):
        mock_cli(odd).api.get("/v1/whoami")
    assert len(calls) == 2 and no_sleep == []


def test_an_unexpected_exception_is_an_internal_error_exit_70(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from controller.client import main as entry

    def broken(_self: Cli) -> Connection:
        raise RuntimeError("boom")

    monkeypatch.setattr(Cli, "connection", broken)
    with pytest.raises(SystemExit) as ended:
        entry.main(["whoami"])
    assert ended.value.code == 70
    err = capsys.readouterr().err
    assert "relayfleet: internal error: RuntimeError: boom (please report it" in err
    help_text = " ".join(CliRunner().invoke(cli, ["--help"]).output.split())
    assert "70 internal error" in help_text and "4 you declined a confirmation" in help_text


def test_tenants_and_sites_named_with_spaces_are_targets(memory_controller: Any) -> None:
    tenant = memory_controller.tenant("Acme Dental")
    memory_controller.host(memory_controller.site(tenant, "Leeds office"), "pbx-leeds-1")
    state = wsgi_cli(memory_controller)
    for option in (["--tenant", "Acme Dental"], ["--site", "Leeds office"]):
        result = invoke(state, "status", *option, "--no-wait")
        assert result.return_value == 0, result.output
        job = memory_controller.ok("GET", f"/v1/jobs/{int(result.output.split()[0])}")
        assert job["counts"]["total"] == 1
