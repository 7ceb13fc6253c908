"""Canary rollouts: waves assigned when a job is accepted, opened by the ledger's claim one
after the other, and the rest skipped when a host of a wave fails (SQLite, in-memory
broker, scripted hosts)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from controller.lanes import Lane
from controller.ledger import SkipReason, canary_size, wave_numbers
from controller.testing import Call, FakeTransports
from shared.results import OperationResult
from shared.validation import DEFAULT_VERIFY_TIMEOUT_S
from tests.controller_client import Controller

VERIFY = {"to": "probe@ourtest.com"}
RELAY = {"host": "relay.example.net", "verify": VERIFY}


@pytest.fixture
def controller(memory_controller: Controller) -> Controller:
    """A controller on a fresh SQLite file and an in-memory broker."""
    return memory_controller


@pytest.fixture
def hosts(controller: Controller) -> list[int]:
    """Five agent hosts on one site (pbx-0 ... pbx-4, in id order)."""
    site = controller.site(controller.tenant("Acme"), "Leeds")
    return [int(controller.host(site, f"pbx-{n}")["id"]) for n in range(5)]


def run_lane(controller: Controller, job_id: int, transports: FakeTransports) -> None:
    """Run lane 0 of the job to the end in this thread (nothing handed over runs)."""
    with controller.app.app_context():
        Lane(job_id, 0, transports=transports, send=lambda *_a, **_k: None).run()


@pytest.mark.parametrize(("total", "canary", "wave_size", "waves"), [
    (5, None, None, [0, 0, 0, 0, 0]),
    (5, 1, None, [0, 1, 1, 1, 1]),
    (5, "20%", 2, [0, 1, 1, 2, 2]),
    (5, None, 2, [0, 0, 1, 1, 2]),
    (3, 10, None, [0, 0, 0]),
    (10, "10%", 3, [0, 1, 1, 1, 2, 2, 2, 3, 3, 3]),
    (1, "50%", 5, [0]),
    (0, 1, 1, []),
])
def test_wave_numbers(total: int, canary: int | str | None, wave_size: int | None,
                      waves: list[int]) -> None:
    assert wave_numbers(total, canary, wave_size) == waves


def test_a_percentage_canary_rounds_up_and_holds_at_least_one_host() -> None:
    assert canary_size(1000, "1%") == 10
    assert canary_size(7, "10%") == 1
    assert canary_size(11, "10%") == 2
    assert canary_size(3, "100%") == 3
    assert canary_size(3, 5) == 3


@pytest.mark.parametrize(("action", "params", "options", "key"), [
    ("collect_status", {}, {"canary": 1}, "options.canary"),
    ("diagnose", {}, {"wave_size": 2}, "options.wave_size"),
    ("set_smarthost", {"host": "relay.example.net"}, {"canary": 1}, "params.verify"),
    ("flush_queue", {}, {"canary": "10%"}, "params.verify"),
    ("set_smarthost", RELAY, {"canary": 0}, "options.canary"),
    ("set_smarthost", RELAY, {"canary": "0%"}, "options.canary"),
    ("set_smarthost", RELAY, {"canary": "101%"}, "options.canary"),
    ("set_smarthost", RELAY, {"canary": "ten"}, "options.canary"),
    ("set_smarthost", RELAY, {"canary": True}, "options.canary"),
    ("set_smarthost", RELAY, {"canary": 1, "wave_size": 0}, "options.wave_size"),
    ("flush_queue", {"verify": {**VERIFY, "timeout_s": 300}}, {}, "options.timeout_s"),
    ("set_smarthost", RELAY, {"timeout_s": 60}, "options.timeout_s"),
    ("set_smarthost", {"host": "relay.example.net"}, {"wave_size": 2}, "params.verify"),
    ("flush_queue", {}, {"wave_size": 1}, "params.verify"),
])
def test_a_rollout_the_job_cannot_have_is_refused_saying_why(
        controller: Controller, hosts: list[int], action: str, params: dict[str, Any],
        options: dict[str, Any], key: str) -> None:
    answer = controller.post("/v1/jobs", {"action": action, "target": {"all": True},
                                          "params": params, "options": options},
                             headers={"Idempotency-Key": f"refused-{action}-{key}-{options}"})
    assert answer.status == 422, answer
    assert key in answer.json["errors"], answer.json
    if key == "params.verify":
        assert "needs params.verify" in answer.json["errors"][key][0]


def test_remove_and_fix_hostname_canaries_need_no_probe(controller: Controller,
                                                        hosts: list[int]) -> None:
    for action, params in (("remove_smarthost", {}), ("fix_hostname", {"domain": "acme.fr"})):
        controller.start_job({"action": action, "target": {"all": True}, "params": params,
                              "options": {"canary": 2}})


def test_a_failed_canary_stops_the_rollout_and_leaves_the_rest_untouched(
        controller: Controller, hosts: list[int]) -> None:
    job = controller.start_job({"action": "set_smarthost", "target": {"all": True},
                                "params": RELAY, "options": {"canary": 1, "concurrency": 5}})
    refused = OperationResult("set_smarthost", ok=False, rolled_back=True, error=(
        "delivery not verified: relay.example.net. [192.0.2.7] answered: 550 5.7.1 Sender "
        "address rejected"), data={"delivery_verified": False})
    fake = FakeTransports(answers={"pbx-0": refused})
    run_lane(controller, job, fake)
    doc = controller.ok("GET", f"/v1/jobs/{job}")
    assert fake.hosts_called() == ["pbx-0"]
    assert doc["status"] == "failed"
    by_host = {r["host"]: r for r in doc["results"]}
    assert by_host["pbx-0"]["status"] == "failed" and by_host["pbx-0"]["wave"] == 0
    reason = SkipReason.WAVE_FAILED.text(wave=0, host="pbx-0", error=refused.error)
    for name in ("pbx-1", "pbx-2", "pbx-3", "pbx-4"):
        assert by_host[name]["status"] == "skipped" and by_host[name]["wave"] == 1
        assert by_host[name]["error"] == reason
    assert "550 5.7.1 Sender address rejected" in reason


def wave_watch(result: Callable[[], OperationResult]
               ) -> tuple[dict[str, int], list[str], Callable[[Call], OperationResult]]:
    """Five hosts in waves 0, 1, 1, 2, 2: (each host's wave, the overlaps seen, a scripted
    answer that notes a host started before an earlier wave finished, then answers
    ``result()``)."""
    wave_of = {f"pbx-{n}": wave for n, wave in enumerate([0, 1, 1, 2, 2])}
    finished: set[str] = set()
    overlaps: list[str] = []
    lock = threading.Lock()

    def answer(call: Call) -> OperationResult:
        with lock:
            early = [name for name, wave in wave_of.items()
                     if wave < wave_of[call.host] and name not in finished]
            if early:
                overlaps.append(f"{call.host} started before {early} finished")
        time.sleep(0.05)
        with lock:
            finished.add(call.host)
        return result()

    return wave_of, overlaps, answer


def test_waves_start_one_after_the_other_with_the_lanes_threads(
        controller: Controller, hosts: list[int]) -> None:
    wave_of, overlaps, answer = wave_watch(lambda: OperationResult(
        "flush_queue", data={"before": 0, "after": 0, "deliveries": [], "remaining": []}))

    job = controller.start_job({"action": "flush_queue", "target": {"all": True},
                                "params": {"verify": VERIFY},
                                "options": {"canary": "20%", "wave_size": 2,
                                            "concurrency": 4}})
    fake = FakeTransports(default=answer)
    run_lane(controller, job, fake)
    doc = controller.ok("GET", f"/v1/jobs/{job}")
    assert doc["status"] == "succeeded", doc["results"]
    assert overlaps == []
    assert sorted(fake.hosts_called()) == sorted(wave_of)
    assert [r["wave"] for r in doc["results"]] == [0, 1, 1, 2, 2]
    assert fake.calls[0].request.verify.to == "probe@ourtest.com"


def test_a_failure_in_a_later_wave_skips_the_waves_after_it(
        controller: Controller, hosts: list[int]) -> None:
    job = controller.start_job({"action": "remove_smarthost", "target": {"all": True},
                                "options": {"canary": 1, "wave_size": 2, "concurrency": 1}})
    fake = FakeTransports(answers={"pbx-2": OperationResult(
        "remove_smarthost", ok=False, error="make failed")})
    run_lane(controller, job, fake)
    doc = controller.ok("GET", f"/v1/jobs/{job}")
    by_host = {r["host"]: r for r in doc["results"]}
    assert doc["status"] == "partial"
    assert sorted(fake.hosts_called()) == ["pbx-0", "pbx-1", "pbx-2"]
    assert [by_host[f"pbx-{n}"]["status"] for n in range(5)] == [
        "succeeded", "succeeded", "failed", "skipped", "skipped"]
    assert by_host["pbx-4"]["error"] == "not started: wave 1 failed: host pbx-2: make failed"


def test_the_api_reference_describes_waves_and_probes(controller: Controller) -> None:
    schemas = controller.ok("GET", "/openapi.json")["components"]["schemas"]
    options = next(schema for name, schema in schemas.items() if name.startswith("Options"))
    canary = options["properties"]["canary"]
    assert {alt.get("type") for alt in canary["oneOf"]} == {"integer", "string"}
    assert options["properties"]["wave_size"]["minimum"] == 1
    assert "verify?" in schemas["JobCreate"]["properties"]["params"]["description"]
    assert {"verified", "relay", "reply", "queue_id", "message_id", "waited_s"} == set(
        schemas["DeliveryProbe"]["properties"])
    for result in ("SetSmarthostResult", "FlushQueueResult"):
        assert {"delivery", "delivery_verified"} <= set(schemas[result]["properties"])
    assert "wave" in schemas["HostResult"]["properties"]


def test_the_console_launches_a_verified_canary_flush(controller: Controller,
                                                      hosts: list[int]) -> None:
    from tests.unit.test_console_launch_pages import Browser, job_id_of

    browser = Browser(controller, controller.issue("operator"))
    page = browser.page("/ui/launch?action=flush_queue")
    for name in ("verify_to", "canary", "wave_size"):
        assert f'name="{name}"' in page, name
    key = re.search(r'name="launch_key" value="([^"]+)"', page)
    assert key
    form = {"action": "flush_queue", "all": "1", "intent": "run", "launch_key": key.group(1),
            "canary": "20%", "wave_size": "2"}
    refused = browser.post("/ui/launch", form)
    assert refused.status_code == 422
    assert "needs params.verify" in refused.get_data(as_text=True)
    answer = browser.post("/ui/launch", {**form, "verify_to": "probe@ourtest.com"})
    assert answer.status_code == 303, answer.get_data(as_text=True)[:2000]
    doc = controller.ok("GET", f"/v1/jobs/{job_id_of(answer.headers['Location'], '/ui/jobs/')}")
    assert doc["params"]["verify"]["to"] == "probe@ourtest.com"
    assert doc["options"]["canary"] == "20%" and doc["options"]["wave_size"] == 2
    assert [r["wave"] for r in doc["results"]] == [0, 1, 1, 2, 2]


def test_the_cli_sends_the_probe_and_the_waves(controller: Controller,
                                               hosts: list[int]) -> None:
    from controller.client.errors import ApiRefused, UsageProblem
    from tests.unit.test_cli_jobs import invoke, wsgi_cli

    state = wsgi_cli(controller)
    result = invoke(state, "--json", "smarthost", "set", "relay.example.net:587", "--site",
                    "Leeds", "--verify-to", "probe@ourtest.com", "--canary", "20%",
                    "--wave-size", "3", "--no-wait")
    assert result.return_value == 0, result.output
    job = controller.ok("GET", f"/v1/jobs/{json.loads(result.output)['id']}")
    assert job["params"]["verify"] == {"to": "probe@ourtest.com", "from": None,
                                       "timeout_s": DEFAULT_VERIFY_TIMEOUT_S}
    assert job["options"]["canary"] == "20%" and job["options"]["wave_size"] == 3
    assert [r["wave"] for r in job["results"]] == [0, 1, 1, 1, 2]
    with pytest.raises(ApiRefused) as refused:
        invoke(state, "flush", "--site", "Leeds", "--canary", "2", "--no-wait")
    assert "needs params.verify" in refused.value.message
    with pytest.raises(UsageProblem):
        invoke(state, "hostname", "--site", "Leeds", "--domain", "acme.fr", "--canary", "x")


# -- the claim's decision, lanes and waves, retry, cancel ---------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request: pytest.FixtureRequest, memory_controller: Controller,
           monkeypatch: pytest.MonkeyPatch) -> Controller:
    """A controller (in-memory broker) on SQLite or on a PostgreSQL database of its own."""
    if request.param == "sqlite":
        return memory_controller
    from controller.migrate import upgrade

    url = request.getfixturevalue("postgres_server").new_database()
    upgrade(url)
    monkeypatch.setenv("RELAYFLEET_DATABASE_URL", url)
    return Controller.create()


def test_a_failure_committed_while_a_claim_decides_opens_no_later_wave(
        any_db: Controller) -> None:
    """Before, the claim asked "did a unit fail?" and "which wave is open?" in two
    statements: a canary failure committed between them (READ COMMITTED) let a wave-1 host
    start. The failure is committed here right after the first question: on PostgreSQL by
    another connection, on SQLite (one writer at a time) in the claim's own."""
    from sqlalchemy import event, update

    from controller import ledger
    from controller.db import db
    from controller.models import JobHost

    controller = any_db
    site = controller.site(controller.tenant("Acme"), "Leeds")
    for n in range(4):
        controller.host(site, f"pbx-{n}")
    job = controller.start_job({"action": "remove_smarthost", "target": {"all": True},
                                "options": {"canary": 1, "concurrency": 4}})
    with controller.app.app_context():
        with db.transaction() as session:
            canary = ledger.claim(session, job, timeout_s=60, max_failures=None)
        assert canary is not None
        engine = db.engine
        assert engine is not None
        fail = (update(JobHost).where(JobHost.id == canary.unit_id)
                .values(status="failed", error="make failed", lease_until=None))
        fired: list[str] = []

        def fail_the_canary(conn: Any, cursor: Any, statement: str, parameters: Any,
                            _context: Any, _many: bool) -> None:
            values = set(parameters.values() if isinstance(parameters, dict)
                         else parameters or ())
            if (fired or not statement.lstrip().upper().startswith("SELECT")
                    or not {"failed", "unreachable"} <= values):
                return
            fired.append(statement)
            if engine.dialect.name == "sqlite":
                compiled = fail.compile(dialect=engine.dialect)
                cursor.connection.cursor().execute(
                    str(compiled), tuple(compiled.params[key]
                                         for key in compiled.positiontup or ()))
            else:
                with engine.begin() as other:
                    other.execute(fail)

        event.listen(engine, "after_cursor_execute", fail_the_canary)
        try:
            with db.transaction() as session:
                second = ledger.claim(session, job, timeout_s=60, max_failures=None)
        finally:
            event.remove(engine, "after_cursor_execute", fail_the_canary)
        assert fired, "the claim no longer asks whether a unit failed"
        assert second is None, f"unit {second} of a later wave started after the canary failed"
        with db.transaction() as session:
            assert ledger.claim(session, job, timeout_s=60, max_failures=None) is None
    units = controller.ok("GET", f"/v1/jobs/{job}")["results"]
    assert [u["status"] for u in units] == ["failed", "skipped", "skipped", "skipped"]
    assert {u["error"] for u in units[1:]} == {
        "not started: wave 0 failed: host pbx-0: make failed"}


def test_a_dead_workers_canary_is_taken_again_before_the_next_wave_opens(
        controller: Controller, hosts: list[int]) -> None:
    from sqlalchemy import update

    from controller.db import db
    from controller.models import JobHost

    job = controller.start_job({"action": "remove_smarthost", "target": {"all": True},
                                "options": {"canary": 1, "concurrency": 5}})
    with controller.app.app_context():
        lane = Lane(job, 0, transports=FakeTransports(), send=lambda *_a, **_k: None)
        plan = lane.load()
        assert plan is not None
        dead = lane.claim(plan)  # its worker is SIGKILLed: nothing renews the lease
        assert dead is not None and dead.host_id == hosts[0]
        assert lane.claim(plan) is None  # the canary runs: wave 1 stays shut
        with db.transaction() as session:  # a lease later
            session.execute(update(JobHost).where(JobHost.id == dead.unit_id)
                            .values(lease_until=time.time() - 1))
    fake = FakeTransports()
    run_lane(controller, job, fake)
    doc = controller.ok("GET", f"/v1/jobs/{job}")
    assert doc["status"] == "succeeded"
    assert fake.hosts_called()[0] == "pbx-0" and sorted(fake.hosts_called()) == [
        f"pbx-{n}" for n in range(5)]
    assert doc["results"][0]["attempts"] == 2
    assert all(r["attempts"] == 1 for r in doc["results"][1:])


def test_two_lanes_at_once_keep_the_waves_apart(controller: Controller,
                                                hosts: list[int]) -> None:
    wave_of, overlaps, answer = wave_watch(lambda: OperationResult("remove_smarthost"))

    job = controller.start_job({"action": "remove_smarthost", "target": {"all": True},
                                "options": {"canary": 1, "wave_size": 2, "concurrency": 4}})
    fake = FakeTransports(default=answer)
    sent: list[tuple[Any, ...]] = []
    with controller.app.app_context():
        settings = controller.app.config["RELAYFLEET_SETTINGS"].with_overrides(
            {"lane_threads": 2})
    errors: list[BaseException] = []

    def lane(number: int) -> None:
        try:
            with controller.app.app_context():
                Lane(job, number, settings=settings, transports=fake,
                     send=lambda *args, **_k: sent.append(args)).run()
        except BaseException as exc:
            errors.append(exc)

    # Each lane runs to its end (a lane with nothing to take hands over: run it again, as
    # the broker would) until the job has finished.
    for _ in range(10):
        threads = [threading.Thread(target=lane, args=(n,)) for n in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if controller.ok("GET", f"/v1/jobs/{job}")["finished_at"]:
            break
    assert errors == []
    doc = controller.ok("GET", f"/v1/jobs/{job}")
    assert doc["status"] == "succeeded", doc["results"]
    assert overlaps == []
    assert sorted(fake.hosts_called()) == sorted(wave_of)


def test_a_lane_with_nothing_to_take_while_a_wave_runs_waits_for_its_lease(
        controller: Controller, hosts: list[int]) -> None:
    """Before, the other lanes of a job in waves looked again every SHARE_WAIT_S (2 s)
    while the open wave ran elsewhere."""
    from controller import dispatch, lanes

    job = controller.start_job({"action": "remove_smarthost", "target": {"all": True},
                                "options": {"canary": 1, "concurrency": 5}})
    sent: list[tuple[Any, ...]] = []
    with controller.app.app_context():
        settings = controller.app.config["RELAYFLEET_SETTINGS"]
        busy = Lane(job, 0, transports=FakeTransports(), send=lambda *_a, **_k: None)
        plan = busy.load()
        assert plan is not None
        assert busy.claim(plan) is not None  # the canary runs in another lane
        fake = FakeTransports()
        Lane(job, 1, transports=fake,
             send=lambda *args, **kwargs: sent.append((*args, kwargs["countdown"]))).run()
    assert fake.calls == []
    (task, job_id, number, width, countdown), = sent
    assert (task, job_id, number, width) == (dispatch.RUN_LANE, job, 1,
                                             settings.lane_threads)
    assert lanes.SHARE_WAIT_S < countdown <= settings.lease_s + 1


class _SlowCanaryRecord(Lane):
    """A lane whose canary's result is stored only once another thread has looked for a
    host after the canary's run ended (when, before, the canary was no longer held)."""

    def __init__(self, *args: Any, canary_host: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.canary_host = canary_host
        self.claims = 0
        self.claimed = threading.Condition()

    def claim(self, plan: Any) -> Any:
        found = super().claim(plan)
        with self.claimed:
            self.claims += 1
            self.claimed.notify_all()
        return found

    def record(self, plan: Any, claim: Any, **kwargs: Any) -> None:
        if claim.host_id == self.canary_host:
            with self.claimed:
                seen = self.claims
                self.claimed.wait_for(lambda: self.claims > seen, timeout=10)
        super().record(plan, claim, **kwargs)


def test_a_lanes_threads_stay_for_the_next_wave_while_the_canary_is_stored(
        controller: Controller, hosts: list[int]) -> None:
    barrier = threading.Barrier(2, timeout=10)

    def answer(call: Call) -> OperationResult:
        if call.host in ("pbx-1", "pbx-2"):  # wave 1 runs on both threads at once
            barrier.wait()
        return OperationResult("remove_smarthost")

    job = controller.start_job({"action": "remove_smarthost", "target": {"hosts": hosts[:3]},
                                "options": {"canary": 1, "concurrency": 2}})
    with controller.app.app_context():
        settings = controller.app.config["RELAYFLEET_SETTINGS"].with_overrides(
            {"lane_threads": 2})
        _SlowCanaryRecord(job, 0, settings=settings, transports=FakeTransports(
            default=answer), send=lambda *_a, **_k: None, canary_host=hosts[0]).run()
    doc = controller.ok("GET", f"/v1/jobs/{job}")
    assert doc["status"] == "succeeded", doc["results"]


@pytest.mark.parametrize("where", ["_spec", "record"])
def test_a_unit_whose_run_breaks_is_no_longer_held(controller: Controller, hosts: list[int],
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   where: str) -> None:
    """A held unit keeps its lease renewed and the lane's other threads waiting for its
    wave: one whose run raised must be let go."""
    job = controller.start_job({"action": "remove_smarthost", "target": {"hosts": hosts[:3]},
                                "options": {"canary": 1, "concurrency": 2}})

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(Lane, where, broken)
    with controller.app.app_context():
        settings = controller.app.config["RELAYFLEET_SETTINGS"].with_overrides(
            {"lane_threads": 2, "lane_budget_s": 2})
        lane = Lane(job, 0, settings=settings, transports=FakeTransports(),
                    send=lambda *_a, **_k: None)
        lane.run()
    assert lane._held == {}


def test_cancelling_a_job_in_waves_starts_no_later_wave(controller: Controller,
                                                        hosts: list[int]) -> None:
    cancelled: list[Any] = []

    def answer(call: Call) -> OperationResult:
        cancelled.append(controller.post(f"/v1/jobs/{job}/cancel"))
        return OperationResult("remove_smarthost")

    job = controller.start_job({"action": "remove_smarthost", "target": {"all": True},
                                "options": {"canary": 2, "concurrency": 1}})
    fake = FakeTransports(default=answer)
    run_lane(controller, job, fake)
    assert cancelled[0].status == 200, cancelled[0]
    doc = controller.ok("GET", f"/v1/jobs/{job}")
    assert doc["status"] == "cancelled" and doc["finished_at"]
    assert fake.hosts_called() == ["pbx-0"]
    assert [r["status"] for r in doc["results"]] == ["succeeded"] + ["skipped"] * 4
    assert {r["error"] for r in doc["results"][1:]} == {SkipReason.CANCELLED.text()}


def test_a_retry_after_a_failed_canary_takes_the_hosts_the_failure_skipped(
        controller: Controller, hosts: list[int]) -> None:
    job = controller.start_job({"action": "remove_smarthost", "target": {"all": True},
                                "options": {"canary": 1, "wave_size": 2, "concurrency": 1}})
    run_lane(controller, job, FakeTransports(answers={"pbx-0": OperationResult(
        "remove_smarthost", ok=False, error="make failed")}))
    retry = controller.ok("POST", f"/v1/jobs/{job}/retry", expect=202)
    doc = controller.ok("GET", f"/v1/jobs/{retry['id']}")
    assert [r["host"] for r in doc["results"]] == [f"pbx-{n}" for n in range(5)]
    assert [r["wave"] for r in doc["results"]] == [0, 1, 1, 2, 2]
    # a host skipped because the job was cancelled is not the retry's
    cancelled = controller.start_job({"action": "remove_smarthost", "target": {"all": True},
                                      "options": {"canary": 1}})
    controller.ok("POST", f"/v1/jobs/{cancelled}/cancel")
    assert controller.post(f"/v1/jobs/{cancelled}/retry").status == 422


def test_a_rollout_with_max_failures_is_refused(controller: Controller,
                                                hosts: list[int]) -> None:
    for options in ({"canary": 1, "max_failures": 2}, {"wave_size": 2, "max_failures": 0}):
        answer = controller.post("/v1/jobs", {
            "action": "remove_smarthost", "target": {"all": True}, "options": options},
            headers={"Idempotency-Key": f"max-failures-{options}"})
        assert answer.status == 422, answer
        assert "stops at the first failed host" in answer.json["errors"][
            "options.max_failures"][0]


def test_a_wave_failure_names_the_wave_even_with_max_failures(
        controller: Controller, hosts: list[int]) -> None:
    """A job stored before max_failures was refused with waves: the wave's reason wins."""
    from sqlalchemy import update

    from controller.db import db
    from controller.models import Job

    job = controller.start_job({"action": "remove_smarthost", "target": {"all": True},
                                "options": {"canary": 1, "concurrency": 1}})
    with controller.app.app_context(), db.transaction() as session:
        options = session.get(Job, job).options  # type: ignore[union-attr]
        session.execute(update(Job).where(Job.id == job).values(
            options={**options, "max_failures": 0}))
    run_lane(controller, job, FakeTransports(answers={"pbx-0": OperationResult(
        "remove_smarthost", ok=False, error="make failed")}))
    doc = controller.ok("GET", f"/v1/jobs/{job}")
    assert {r["error"] for r in doc["results"][1:]} == {
        "not started: wave 0 failed: host pbx-0: make failed"}


def test_probe_allow_limits_the_probes_recipients(memory_controller: Controller,
                                                  hosts: list[int]) -> None:
    controller = Controller.create(probe_allow=("ourtest.com", "acme.fr"))
    for verify, field in (({"to": "someone@elsewhere.example"}, "params.verify.to"),
                          ({"to": "probe@acme.fr", "from": "x@evil.example"},
                           "params.verify.from"),
                          ({"to": "probe@notacme.fr"}, "params.verify.to")):
        answer = controller.post("/v1/jobs", {
            "action": "flush_queue", "target": {"all": True}, "params": {"verify": verify}},
            headers={"Idempotency-Key": f"probe-allow-{verify}"})
        assert answer.status == 422, answer
        assert "RELAYFLEET_PROBE_ALLOW" in answer.json["errors"][field][0]
    for to in ("probe@ourtest.com", "Probe@Mail.ACME.fr"):
        controller.start_job({"action": "set_smarthost", "target": {"all": True},
                              "params": {"host": "relay.example.net", "verify": {"to": to}}})
    # unset: any recipient
    memory_controller.start_job({"action": "flush_queue", "target": {"all": True},
                                 "params": {"verify": {"to": "someone@elsewhere.example"}}})


def test_probe_allow_is_read_from_the_environment() -> None:
    from controller.config import load_settings
    from shared.errors import ConfigError

    env = {"RELAYFLEET_DATABASE_URL": "sqlite://", "RELAYFLEET_SECRET_KEY": "k" * 20}
    assert load_settings(env).probe_allow == ()
    assert load_settings({**env, "RELAYFLEET_PROBE_ALLOW": " Acme.FR, @ourtest.com ,"}
                         ).probe_allow == ("acme.fr", "ourtest.com")
    with pytest.raises(ConfigError, match="RELAYFLEET_PROBE_ALLOW"):
        load_settings({**env, "RELAYFLEET_PROBE_ALLOW": "acme.fr, not a domain"})


def test_a_claim_brings_its_hosts_row_or_none_for_a_deleted_host(any_db: Controller) -> None:
    """On PostgreSQL the claim reads its host in the same statement (UPDATE … FROM), on
    SQLite by a second one: either way a live host comes whole, a host deleted after the
    job was accepted comes as None (its unit then fails saying so)."""
    from controller import ledger
    from controller.db import db

    controller = any_db
    site = controller.site(controller.tenant("Acme"), "Leeds")
    kept, gone = (int(controller.host(site, f"pbx-{n}", address=f"192.0.2.{n + 1}")["id"])
                  for n in range(2))
    job = controller.start_job({"action": "flush_queue", "target": {"all": True}})
    assert controller.call("DELETE", f"/v1/hosts/{gone}").status == 204
    with controller.app.app_context(), db.transaction() as session:
        first = ledger.claim(session, job, timeout_s=60, max_failures=None)
        second = ledger.claim(session, job, timeout_s=60, max_failures=None)
        assert ledger.claim(session, job, timeout_s=60, max_failures=None) is None
    assert first is not None and second is not None
    assert (first.host_id, second.host_id) == (kept, gone)
    assert first.host is not None and second.host is None
    assert set(first.host) == {column.key for column in ledger.HOST_COLUMNS}
    assert (first.host["id"], first.host["name"], first.host["address"]) == (
        kept, "pbx-0", "192.0.2.1")


def test_a_record_stores_the_unit_and_its_host_or_nothing_when_taken_over(
        any_db: Controller) -> None:
    """On PostgreSQL the unit and its host are one statement (the host's UPDATE driven by
    the unit's RETURNING), on SQLite two: either way an attempt whose unit was taken over
    by a later one stores nothing, neither the unit nor the host."""
    from sqlalchemy import select, update

    from controller import ledger
    from controller.db import db
    from controller.models import Host, JobHost

    controller = any_db
    site = controller.site(controller.tenant("Acme"), "Leeds")
    host_id = int(controller.host(site, "pbx-0")["id"])
    job = controller.start_job({"action": "flush_queue", "target": {"all": True}})
    streak = {"unreachable_streak": Host.unreachable_streak + 1}
    with controller.app.app_context():
        with db.transaction() as session:
            stale = ledger.claim(session, job, timeout_s=60, max_failures=None)
            assert stale is not None
            # its worker is presumed dead: the lease lapses and a later attempt takes over
            session.execute(update(JobHost).where(JobHost.id == stale.unit_id)
                            .values(lease_until=0))
            taken = ledger.claim(session, job, timeout_s=60, max_failures=None)
            assert taken is not None and taken.attempt == stale.attempt + 1
        with db.transaction() as session:
            assert not ledger.record(session, stale, ledger.Outcome(
                ledger.UnitState.UNREACHABLE, error="late"), streak)
        with db.transaction() as session:
            assert session.scalar(select(Host.unreachable_streak)
                                  .where(Host.id == host_id)) == 0
            assert ledger.record(session, taken, ledger.Outcome(
                ledger.UnitState.UNREACHABLE, error="no route", data={"n": 1}), streak)
        with db.transaction() as session:
            assert session.scalar(select(Host.unreachable_streak)
                                  .where(Host.id == host_id)) == 1
            unit = session.execute(select(JobHost.status, JobHost.error, JobHost.data,
                                          JobHost.lease_until)).one()
    assert tuple(unit) == ("unreachable", "no route", {"n": 1}, None)


def test_a_records_host_update_is_built_once_per_shape_with_each_hosts_own_values(
        any_db: Controller) -> None:
    """record's host UPDATE is built once per shape of what was learned and reused: the
    values are bound, so each host gets its own, and the streak expression still counts
    each miss."""
    from sqlalchemy import select

    from controller import ledger
    from controller.db import db
    from controller.job_params import learned
    from controller.models import Host

    controller = any_db
    site = controller.site(controller.tenant("Acme"), "Leeds")
    ids = [int(controller.host(site, f"pbx-{n}", address=f"192.0.2.{n + 1}")["id"])
           for n in range(4)]
    job = controller.start_job({"action": "flush_queue", "target": {"all": True}})
    plan = {"action": "flush_queue", "options": {}}
    statements = set()
    with controller.app.app_context():
        for n in range(4):
            with db.transaction() as session:
                claim = ledger.claim(session, job, timeout_s=60, max_failures=None)
                assert claim is not None
                status = "failed" if n < 2 else "unreachable"
                state = learned(job, plan, status=status, error=f"error {claim.host_id}",
                                result=None)
                statements.add(id(ledger._host_update(state, ledger._on_postgres(session))[0]))
                assert ledger.record(session, claim, ledger.Outcome(
                    ledger.UnitState(status), error=f"error {claim.host_id}"), state)
        with db.transaction() as session:
            rows = session.execute(select(Host.id, Host.last_error, Host.last_reachable,
                                          Host.unreachable_streak).order_by(Host.id)).all()
    assert len(statements) == 2  # one per shape: failed, unreachable
    assert [tuple(row) for row in rows] == [
        (host, f"error {host}", n < 2, 0 if n < 2 else 1) for n, host in enumerate(ids)]


def test_claim_more_takes_pending_units_in_order_within_the_tenants_share(
        any_db: Controller) -> None:
    """A lane starting all its threads takes their first units in one statement: pending
    units in the rollout's order, each with its host's row, never one a claim holds, and
    no more than the tenant's share leaves room for."""
    from controller import ledger
    from controller.db import db

    controller = any_db
    site = controller.site(controller.tenant("Acme"), "Leeds")
    ids = [int(controller.host(site, f"pbx-{n}", address=f"192.0.2.{n + 1}")["id"])
           for n in range(6)]
    job = controller.start_job({"action": "flush_queue", "target": {"all": True}})
    options = controller.ok("GET", f"/v1/jobs/{job}?results=false")["options"]
    with controller.app.app_context(), db.transaction() as session:
        first = ledger.claim(session, job, timeout_s=60, max_failures=None,
                             tenant_max_running=4, options=options)
        more = ledger.claim_more(session, job, 5, timeout_s=60, tenant_max_running=4,
                                 options=options)
        # the share (4) leaves room for 3 more, taken in order after the first
        assert first is not None and first.host_id == ids[0]
        assert [c.host_id for c in more] == ids[1:4]
        assert all(c.attempt == 1 and c.host and c.host["id"] == c.host_id for c in more)
        assert ledger.claim_more(session, job, 5, timeout_s=60, tenant_max_running=4,
                                 options=options) == []
        rest = ledger.claim_more(session, job, 5, timeout_s=60, options=options)
        assert [c.host_id for c in rest] == ids[4:]
        assert ledger.claim_more(session, job, 5, timeout_s=60, options=options) == []
        assert ledger.counts(session, job)["running"] == 6


def test_a_tenants_share_counts_its_other_unfinished_jobs(any_db: Controller) -> None:
    """The share is counted over the tenant's unfinished jobs (an index finds them, so a
    claim does not slow down as the tenant's past jobs pile up): a second job of the
    tenant waits while the first holds the share; another tenant's job does not."""
    from controller import ledger
    from controller.db import db

    controller = any_db
    tokens = {}
    for name in ("Acme", "Brill"):
        tenant = controller.tenant(name)
        site = controller.site(tenant, "Leeds")
        for n in range(3):
            controller.host(site, f"{name.lower()}-{n}")
        tokens[name] = controller.issue("operator", tenant)
    done = controller.start_job({"action": "collect_status", "target": {"all": True}},
                                token=tokens["Acme"])
    assert controller.ok("POST", f"/v1/jobs/{done}/cancel")["finished_at"] is not None
    first, second, other = (controller.start_job(
        {"action": "collect_status", "target": {"all": True}}, token=tokens[name])
        for name in ("Acme", "Acme", "Brill"))

    def claim(job: int) -> ledger.Claim | None:
        with db.transaction() as session:
            return ledger.claim(session, job, timeout_s=60, max_failures=None,
                                tenant_max_running=2)

    with controller.app.app_context():
        assert claim(first) is not None and claim(first) is not None
        assert claim(second) is None  # Acme holds its share in its first job
        assert claim(other) is not None  # Brill does not
