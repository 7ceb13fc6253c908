"""The action catalogue: one entry per action, parsed once, stored, answered, learnt from."""

from __future__ import annotations

import json
from typing import Any

import pytest
from marshmallow import ValidationError as SchemaError
from marshmallow import validate

from controller.job_params import learned, stored_request, validate_params
from controller.schemas import JobCreateSchema
from shared.actions import (
    ACTIONS,
    CHANGE_ACTIONS,
    HOST_STATE_KEYS,
    JOB_ACTIONS,
    WORKER_ACTIONS,
    result_from_document,
)
from shared.errors import OperationError, ValidationError
from shared.mta import (
    DiagnoseRequest,
    FlushRequest,
    HostnameRequest,
    LogRequest,
    MtaOperations,
    NoParams,
)
from shared.results import OperationResult, Step
from shared.validation import SmarthostRequest, SmtpAuth

SMARTHOST = {"host": "smarthost.example.net", "port": 2525, "mx": False, "mailer": "relay",
             "auth": None}
STEP = Step("compile", ["m4", "sendmail.mc"], 0, 0.01, True, "")


def test_job_actions_are_the_catalogue_the_api_and_todays_order() -> None:
    assert JOB_ACTIONS == ("set_smarthost", "remove_smarthost", "flush_queue",
                           "collect_status", "diagnose", "read_log", "fix_hostname",
                           "queue_list", "install_agent")
    assert [name for name, action in ACTIONS.items() if action.job] == [
        name for name in JOB_ACTIONS if name not in WORKER_ACTIONS]
    assert all(name == action.name for name, action in ACTIONS.items())
    (one_of,) = [v for v in JobCreateSchema().fields["action"].validators
                 if isinstance(v, validate.OneOf)]
    assert tuple(one_of.choices) == JOB_ACTIONS
    assert CHANGE_ACTIONS == ("set_smarthost", "remove_smarthost", "fix_hostname",
                              "install_agent")


def test_commands_and_routes_are_unique() -> None:
    assert len({a.command for a in ACTIONS.values()}) == len(ACTIONS)
    assert len({(a.route.method, a.route.path) for a in ACTIONS.values()}) == len(ACTIONS)


GOOD: list[tuple[str, dict[str, Any], object]] = [
    ("set_smarthost", {"host": "Relay.Example.NET.", "port": 25},
     SmarthostRequest("relay.example.net")),
    ("set_smarthost", {"host": "192.0.2.1", "port": 587, "mx": True, "mailer": "esmtp",
                       "auth": {"username": "pbx", "password": "s3cret!"}},
     SmarthostRequest("[192.0.2.1]", 587, True, "esmtp", SmtpAuth("pbx", "s3cret!"))),
    ("set_smarthost", {"host": "relay.example.net", "auth": None},
     SmarthostRequest("relay.example.net")),
    ("remove_smarthost", {}, NoParams()),
    ("flush_queue", {}, FlushRequest()),
    ("flush_queue", {"reset_host_status": False, "recipient": "me@ourtest.com"},
     FlushRequest(False, recipient="me@ourtest.com")),
    ("flush_queue", {"queue_id": "6AP4mD19010500", "sender": None},
     FlushRequest(queue_id="6AP4mD19010500")),
    ("collect_status", {}, NoParams()),
    ("diagnose", {}, DiagnoseRequest()),
    ("diagnose", {"domain": "OurTest.COM.", "public_ip": "2001:DB8::1"},
     DiagnoseRequest("ourtest.com", "2001:db8::1")),
    ("read_log", {}, LogRequest(200)),
    ("read_log", {"lines": 10000}, LogRequest(10000)),
]

BAD: list[tuple[str, dict[str, Any], str]] = [
    ("set_smarthost", {}, "host"),
    ("set_smarthost", {"host": "x')esyscmd(`id')dnl(`"}, "host"),
    ("set_smarthost", {"host": "relay.example.net", "port": 0}, "port"),
    ("set_smarthost", {"host": "relay.example.net", "port": "25"}, "port"),
    ("set_smarthost", {"host": "relay.example.net", "mailer": "uucp"}, "mailer"),
    ("set_smarthost", {"host": "relay.example.net", "surprise": 1}, "surprise"),
    ("set_smarthost", {"host": "relay.example.net", "auth": {"username": "u"}},
     "auth.password"),
    ("set_smarthost", {"host": "relay.example.net",
                       "auth": {"username": "u", "password": "a\tb"}}, "auth.password"),
    ("set_smarthost", {"host": "relay.example.net", "tls": {"mode": "may"},
                       "auth": {"username": "u", "password": "p w"}}, "tls.mode"),
    ("set_smarthost", {"host": "relay.example.net", "tls": {"mode": "strict"}}, "tls.mode"),
    ("set_smarthost", {"host": "relay.example.net", "tls": {"ca_file": "../ca.pem"}},
     "tls.ca_file"),
    ("set_smarthost", {"host": "relay.example.net", "masquerade": {"domain": "a b"}},
     "masquerade.domain"),
    ("set_smarthost", {"host": "relay.example.net", "masquerade": {}}, "masquerade.domain"),
    ("fix_hostname", {}, "fqdn"),
    ("fix_hostname", {"fqdn": "pbx"}, "fqdn"),
    ("fix_hostname", {"fqdn": "pbx.example.com", "domain": "example.com"}, "domain"),
    ("fix_hostname", {"domain": "x')esyscmd(`id')dnl(`"}, "domain"),
    ("remove_smarthost", {"x": 1}, "x"),
    ("flush_queue", {"queue_id": "abc"}, "queue_id"),
    ("flush_queue", {"recipient": "a;rm -rf /"}, "recipient"),
    ("flush_queue", {"queue_id": "abcdef12", "sender": "x@y"}, "queue_id"),
    ("flush_queue", {"recipient": "a@b", "sender": "x@y"}, "sender"),
    ("flush_queue", {"reset_host_status": "maybe"}, "reset_host_status"),
    ("collect_status", {"x": 1}, "x"),
    ("diagnose", {"domain": "bad domain"}, "domain"),
    ("diagnose", {"domain": "[192.0.2.1]"}, "domain"),
    ("diagnose", {"public_ip": "300.1.1.1"}, "public_ip"),
    ("diagnose", {"public_ip": "fe80::1%eth0"}, "public_ip"),
    ("read_log", {"lines": 0}, "lines"),
    ("read_log", {"lines": 10001}, "lines"),
    ("read_log", {"lines": "many"}, "lines"),
]


@pytest.mark.parametrize(("name", "params", "expected"), GOOD)
def test_parse_accepts_what_the_schema_accepts(name: str, params: dict[str, Any],
                                               expected: object) -> None:
    action = ACTIONS[name]
    action.params_schema().load(params)
    request = action.parse(params)
    assert request == expected
    assert isinstance(request, type(expected))


@pytest.mark.parametrize(("name", "params", "field"), BAD)
def test_parse_refuses_what_the_schema_refuses(name: str, params: dict[str, Any],
                                               field: str) -> None:
    with pytest.raises(SchemaError):
        ACTIONS[name].params_schema().load(params)
    with pytest.raises(ValidationError) as caught:
        ACTIONS[name].parse(params)
    assert field in caught.value.errors, caught.value.errors
    assert caught.value.message.startswith("invalid request: ")


def test_flush_rules_hold_however_the_request_is_built() -> None:
    # A pattern's "$" lets a trailing newline through; the typed request does not.
    with pytest.raises(ValidationError) as caught:
        FlushRequest(queue_id="abcdef12\n")
    assert "queue_id" in caught.value.errors
    with pytest.raises(ValidationError) as caught:
        FlushRequest(queue_id="abcdef12", recipient="a@b")
    assert set(caught.value.errors) == {"queue_id", "recipient"}
    with pytest.raises(ValidationError):
        LogRequest(0)
    with pytest.raises(ValidationError):
        DiagnoseRequest(public_ip="x;id")


@pytest.mark.parametrize("body", [{"dry_run": True}, [], "host"])
def test_parse_refuses_dry_run_and_non_objects(body: object) -> None:
    with pytest.raises(ValidationError):
        ACTIONS["remove_smarthost"].parse(body)


@pytest.mark.parametrize(("name", "params", "expected"), GOOD)
def test_requests_round_trip_through_their_json_form(name: str, params: dict[str, Any],
                                                     expected: object) -> None:
    action = ACTIONS[name]
    request = action.parse(params)
    public, secret = action.split(request)
    public, secret = json.loads(json.dumps(public)), json.loads(json.dumps(secret))
    assert action.stored(public, secret) == request
    assert stored_request(name, public, secret) == request
    assert action.parse(action.to_json(request)) == request
    # the public part is what a job row stores: never the password
    assert "s3cret" not in json.dumps(public)


def test_validate_params_keeps_the_secret_apart_and_prefixes_fields() -> None:
    public, secret = validate_params("set_smarthost", {
        "host": "relay.example.net", "auth": {"username": "pbx", "password": "s3cret!"}}, {})
    assert public["auth"] == {"username": "pbx"} and secret == {"password": "s3cret!"}
    assert validate_params("flush_queue", {}, {}) == (
        {"reset_host_status": True, "queue_id": None, "recipient": None, "sender": None}, None)
    assert validate_params("remove_smarthost", {}, {"dry_run": True}) == ({}, None)
    with pytest.raises(ValidationError) as caught:
        validate_params("set_smarthost", {"host": "relay.example.net",
                                          "auth": {"username": "u", "password": " ab"}}, {})
    assert list(caught.value.errors) == ["params.auth.password"]
    assert caught.value.message.startswith("invalid params: params.auth.password: ")
    with pytest.raises(ValidationError) as caught:
        validate_params("read_smarthost", {}, {})
    assert "action" in caught.value.errors


def test_http_input_carries_the_request_and_dry_run() -> None:
    request = SmarthostRequest("relay.example.net", auth=SmtpAuth("pbx", "s3cret!"))
    assert ACTIONS["set_smarthost"].http_input(request, True) == {
        "host": "relay.example.net", "port": None, "mx": False, "mailer": "relay",
        "auth": {"username": "pbx", "password": "s3cret!"},
        "tls": {"mode": "encrypt", "ca_file": None}, "dry_run": True}
    assert ACTIONS["remove_smarthost"].http_input(NoParams(), False) == {"dry_run": False}
    assert ACTIONS["collect_status"].http_input(NoParams(), False) is None
    assert ACTIONS["read_log"].route.location == "query"
    assert ACTIONS["read_log"].http_input(LogRequest(5), False) == {"lines": 5}


def _result(name: str, data: dict[str, Any], **outcome: Any) -> OperationResult:
    return OperationResult(name, steps=[STEP], data=data, **outcome)


MESSAGE = {"id": "6AP4mD19010500", "size": 321, "queued_at": "2024-01-01T10:00:00",
           "sender": "pbx@lab", "recipients": ["me@ourtest.com"], "reason": "Deferred",
           "flags": "", "section": "mta", "quarantine": None, "processing": False}
RESULTS: dict[str, OperationResult] = {
    "set_smarthost": _result("set_smarthost", {
        "diff": "+define(`SMART_HOST', ...)", "smarthost": SMARTHOST, "config_in_sync": True,
        "backup": "/etc/mail/.relayfleet-backup/1", "active_defines": [], "compiled": True,
        "note": "extra keys are not part of the answer"}, changed=True),
    "remove_smarthost": _result("remove_smarthost", {"dry_run": True, "diff": "-define"},
                                changed=True),
    "fix_hostname": _result("fix_hostname", {
        "diff": "-127.0.1.1 lab1\n+127.0.1.1 lab1.ourtest.com lab1\n", "smarthost": SMARTHOST,
        "config_in_sync": True, "backup": "/etc/mail/.relayfleet-backup/2"}, changed=True),
    "flush_queue": _result("flush_queue", {"before": 1, "after": 0, "deliveries": [
        {"queue_id": "6AP4mD19010500", "recipient": "me@ourtest.com", "outcome": "sent",
         "text": "Sent"}], "remaining": []}),
    "collect_status": _result("collect_status", {
        "hostname": "lab1", "fqdn": "lab1.lab.test",
        "mta": {"kind": "sendmail", "version": "8.17.1", "running": True},
        "smarthost": SMARTHOST, "config_in_sync": True,
        "queue": {"count": 3, "oldest_age_s": 60}, "hosts_file": {"ok": True, "problems": []}}),
    "diagnose": _result("diagnose", {"checks": [
        {"name": "spf", "ok": None, "detail": "skipped", "data": {}}]}, ok=False,
        error="a check failed", error_kind="operation"),
    "read_log": _result("read_log", {"records": [{
        "timestamp": "2024-01-01T10:00:00", "host": "lab1", "program": "sm-mta", "pid": 42,
        "queue_id": "6AP4mD19010500", "kind": "delivery", "fields": {"stat": "Sent"},
        "message": "to=<me@ourtest.com>, stat=Sent", "recipients": ["me@ourtest.com"]}],
        "summary": {"deliveries": 1, "by_stat": {"Sent": 1}, "sent": 1, "deferred": 0,
                    "bounced": 0, "other": 0, "local_handoffs": 0}}),
    "read_smarthost": _result("read_smarthost", {"smarthost": None, "config_in_sync": True}),
    "queue_list": _result("queue_list", {"count": 1, "sections": {"mta": 1},
                                         "messages": [MESSAGE]}),
}


def test_every_action_has_a_sample_result() -> None:
    assert set(RESULTS) == set(ACTIONS)


@pytest.mark.parametrize("name", list(RESULTS))
def test_answer_document_validates_against_the_result_schema(name: str) -> None:
    action, result = ACTIONS[name], RESULTS[name]
    doc = action.document(result)
    assert action.result_schema().validate(json.loads(json.dumps(doc))) == {}
    # an answer back as a result, and answered again, is the same document
    again = result_from_document(name, doc)
    assert again.operation == name
    assert action.document(again) == doc
    if "steps" in doc:
        assert again.steps == [STEP] and again.ok is result.ok
        assert again.error == result.error and again.changed is result.changed
    assert not {"ok", "steps", "changed", "rolled_back"} & set(again.data)


def test_change_document_has_the_agents_keys_only() -> None:
    doc = ACTIONS["set_smarthost"].document(RESULTS["set_smarthost"])
    assert set(doc) == {"ok", "error", "error_kind", "steps", "changed", "diff", "smarthost",
                        "config_in_sync", "rolled_back", "dry_run", "backup", "mta_running",
                        "restored", "not_restored"}
    dry = ACTIONS["remove_smarthost"].document(RESULTS["remove_smarthost"])
    assert dry["dry_run"] is True and dry["smarthost"] is None and dry["backup"] is None


def _data(name: str) -> dict[str, Any]:
    return result_from_document(name, ACTIONS[name].document(RESULTS[name])).data


@pytest.mark.parametrize(("name", "status", "dry_run", "expected"), [
    ("collect_status", "succeeded", False, {"queue_count": 3, "queue_oldest_age_s": 60,
                                            "smarthost": SMARTHOST,
                                            "config_in_sync": True, "mta_running": True,
                                            "mta_detected_kind": "sendmail"}),
    ("collect_status", "failed", False, {}),
    ("flush_queue", "succeeded", False, {"queue_count": 0}),
    ("flush_queue", "failed", False, {"queue_count": 0}),
    ("set_smarthost", "succeeded", False, {"smarthost": SMARTHOST, "config_in_sync": True}),
    # a failed or rolled-back change still reports the configuration it left in place
    ("set_smarthost", "failed", False, {"smarthost": SMARTHOST, "config_in_sync": True}),
    ("set_smarthost", "succeeded", True, {}),
    ("remove_smarthost", "succeeded", True, {}),
    ("diagnose", "failed", False, {}),
    ("read_log", "succeeded", False, {}),
])
def test_what_a_result_teaches_about_its_host(name: str, status: str, dry_run: bool,
                                              expected: dict[str, Any]) -> None:
    learnt = ACTIONS[name].learn(status, _data(name), dry_run)
    assert learnt == expected
    assert set(learnt) <= set(HOST_STATE_KEYS)
    # a failure that left no data teaches nothing
    assert ACTIONS[name].learn("failed", {}, dry_run) == {}


def test_learned_is_generic_glue() -> None:
    job = {"action": "flush_queue", "options": {}}
    result = result_from_document("flush_queue", ACTIONS["flush_queue"].document(
        RESULTS["flush_queue"]))
    values = learned(7, job, status="succeeded", error=None, result=result)
    assert values["queue_count"] == 0 and values["last_reachable"] is True
    assert values["last_job_id"] == 7 and values["last_error"] is None
    unreachable = learned(7, job, status="unreachable", error="down", result=None)
    streak = unreachable.pop("unreachable_streak")
    assert unreachable == {"last_job_id": 7, "last_reachable": False, "last_error": "down"}
    # one more check in a row that could not reach the host (counted by the database)
    assert str(streak) == "hosts.unreachable_streak + :unreachable_streak_1"
    assert values["unreachable_streak"] == 0
    failed = learned(7, job, status="failed", error="boom", result=None)
    assert failed["last_error"] == "boom" and "queue_count" not in failed


class _Ops(MtaOperations):
    """Records which operation ran with what."""

    kind = "fake"

    def __init__(self) -> None:  # no executor: nothing runs
        self.calls: list[tuple[str, object]] = []

    def _note(self, name: str, arg: object = None) -> OperationResult:
        self.calls.append((name, arg))
        return OperationResult(name)

    def read_smarthost(self) -> OperationResult:
        return self._note("read_smarthost")

    def set_smarthost(self, request: SmarthostRequest, *, dry_run: bool = False
                      ) -> OperationResult:
        return self._note("set_smarthost", (request, dry_run))

    def remove_smarthost(self, *, dry_run: bool = False) -> OperationResult:
        return self._note("remove_smarthost", dry_run)

    def queue_list(self) -> OperationResult:
        return self._note("queue_list")

    def queue_flush(self, request: FlushRequest) -> OperationResult:
        return self._note("queue_flush", request)

    def read_log(self, lines: int = 200) -> OperationResult:
        return self._note("read_log", lines)

    def diagnose(self, *, domain: str | None = None,
                 public_ip: str | None = None) -> OperationResult:
        return self._note("diagnose", (domain, public_ip))

    def status(self) -> OperationResult:
        return self._note("status")

    def fix_hostname(self, request: HostnameRequest, *, dry_run: bool = False
                     ) -> OperationResult:
        return self._note("fix_hostname", (request, dry_run))


def test_each_action_runs_its_operation() -> None:
    ops = _Ops()
    request = SmarthostRequest("relay.example.net")
    ACTIONS["set_smarthost"].run(ops, request, dry_run=True)
    ACTIONS["remove_smarthost"].run(ops, NoParams())
    ACTIONS["flush_queue"].run(ops, FlushRequest(queue_id="abcdef12"))
    ACTIONS["collect_status"].run(ops, NoParams())
    ACTIONS["diagnose"].run(ops, DiagnoseRequest("ourtest.com", "192.0.2.10"))
    ACTIONS["read_log"].run(ops, LogRequest(5))
    ACTIONS["read_smarthost"].run(ops, NoParams())
    ACTIONS["queue_list"].run(ops, NoParams())
    ACTIONS["fix_hostname"].run(ops, HostnameRequest(domain="ourtest.com"), dry_run=True)
    assert ops.calls == [
        ("set_smarthost", (request, True)), ("remove_smarthost", False),
        ("queue_flush", FlushRequest(queue_id="abcdef12")), ("status", None),
        ("diagnose", ("ourtest.com", "192.0.2.10")), ("read_log", 5),
        ("read_smarthost", None), ("queue_list", None),
        ("fix_hostname", (HostnameRequest(domain="ourtest.com"), True))]
    with pytest.raises(OperationError, match="no dry run"):
        ACTIONS["flush_queue"].run(ops, FlushRequest(), dry_run=True)


def test_the_agent_serves_every_catalogue_route() -> None:
    from agent.app import create_app
    from agent.config import AgentConfig, MtaSettings

    app = create_app(AgentConfig("127.0.0.1", 8587, "0" * 64, MtaSettings("sendmail")))
    served = {(method, rule.rule) for rule in app.url_map.iter_rules()
              for method in rule.methods or ()}
    for action in ACTIONS.values():
        assert (action.route.method, action.route.path) in served, action.name


def test_relayfleet_ops_offers_every_action() -> None:
    from shared.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices or ()) == {action.command for action in ACTIONS.values()}
