"""Desired state logic: field-by-field inheritance, the effective smarthost checked with
the agent's rules, and drift between a policy and a host's last known state."""

from __future__ import annotations

from typing import Any

import pytest

from controller import policy
from controller.models import Credential, Policy

RELAY = {"host": "relay.acme.example", "port": 25, "mx": False, "mailer": "relay",
         "auth": None, "tls": {"mode": "may", "ca_file": None}, "masquerade": None}


def _row(scope: str, settings: dict[str, Any], *, credential_id: int | None = None,
         auto: bool | None = None, per_hour: int | None = None) -> Policy:
    return Policy(scope=scope, tenant_id=1, settings=settings, credential_id=credential_id,
                  auto_remediate=auto, remediate_per_hour=per_hour)


def _combine(host: Policy | None = None, site: Policy | None = None,
             tenant: Policy | None = None,
             credentials: dict[int, Credential] | None = None) -> policy.Effective:
    return policy.combine(7, 1, [("host:7", host), ("site:2", site), ("tenant:1", tenant)],
                          credentials or {})


def test_fields_come_from_the_most_specific_level_that_sets_them() -> None:
    tenant = _row("tenant:1", {"smarthost": {"host": "relay.acme.example", "port": 587,
                                             "tls": {"mode": "encrypt"}}}, auto=True,
                  per_hour=5)
    site = _row("site:2", {"smarthost": {"port": 2525}})
    host = _row("host:7", {"smarthost": {"masquerade": {"domain": "acme.example"}}},
                auto=False)
    effective = _combine(host, site, tenant)
    assert effective.complete
    assert effective.smarthost == {"host": "relay.acme.example", "port": 2525, "mx": False,
                                   "tls": {"mode": "encrypt", "ca_file": None},
                                   "masquerade": {"domain": "acme.example",
                                                  "envelope": True}}
    assert effective.sources == {"smarthost.host": "tenant:1", "smarthost.port": "site:2",
                                 "smarthost.tls": "tenant:1",
                                 "smarthost.masquerade": "host:7",
                                 "auto_remediate": "host:7", "remediate_per_hour": "tenant:1"}
    assert effective.auto_remediate is False
    assert effective.remediate_per_hour == 5


def test_no_smarthost_at_a_level_hides_what_the_levels_above_it_say() -> None:
    tenant = _row("tenant:1", {"smarthost": {"host": "relay.acme.example"}})
    site = _row("site:2", {"smarthost": None})
    effective = _combine(None, site, tenant)
    assert effective.complete and effective.smarthost is None
    assert effective.sources == {"smarthost": "site:2"}
    # a more specific level still wins over the "none"
    host = _row("host:7", {"smarthost": {"host": "other.acme.example"}})
    effective = _combine(host, site, tenant)
    assert effective.smarthost is not None
    assert effective.smarthost["host"] == "other.acme.example"


def test_a_policy_without_a_relay_host_is_incomplete_and_says_what_to_set() -> None:
    effective = _combine(_row("host:7", {"smarthost": {"port": 2525}}))
    assert effective.defined and not effective.complete
    assert effective.problem is not None and "smarthost.host" in effective.problem
    assert policy.compare(effective, RELAY, True, seen=True) is None


def test_the_credential_makes_tls_required_by_default_and_may_is_a_problem() -> None:
    credentials = {4: Credential(id=4, tenant_id=1, name="acme", username="pbx@acme.example",
                                 password_sealed="x")}
    tenant = _row("tenant:1", {"smarthost": {"host": "relay.acme.example"},
                               "credential": 4}, credential_id=4)
    effective = _combine(None, None, tenant, credentials)
    assert effective.complete
    assert effective.smarthost is not None
    assert effective.smarthost["tls"]["mode"] == "encrypt"
    assert effective.credential_username == "pbx@acme.example"
    site = _row("site:2", {"smarthost": {"tls": {"mode": "may"}}})
    effective = _combine(None, site, tenant, credentials)
    assert not effective.complete
    assert effective.problem is not None and "tls.mode" in effective.problem


def test_no_policy_means_no_drift_to_speak_of() -> None:
    effective = _combine()
    assert not effective.defined
    assert policy.compare(effective, RELAY, False, seen=True) is None


def _wanted(**smarthost: Any) -> policy.Effective:
    return _combine(_row("host:7", {"smarthost": {"host": "relay.acme.example",
                                                  **smarthost}}))


def test_a_host_as_its_policy_says_is_in_line() -> None:
    assert policy.compare(_wanted(), RELAY, True, seen=True) == []
    # the name's case is not a difference
    assert policy.compare(_wanted(host="Relay.ACME.example"), RELAY, True, seen=True) == []


def test_a_host_never_seen_has_no_drift_yet() -> None:
    assert policy.compare(_wanted(), None, None, seen=False) is None


@pytest.mark.parametrize(("have", "expected"), [
    ({**RELAY, "host": "old.relay.example"},
     [{"field": "host", "want": "relay.acme.example", "have": "old.relay.example"}]),
    ({**RELAY, "port": 2525}, [{"field": "port", "want": 25, "have": 2525}]),
    ({**RELAY, "auth": {"username": "someone"}},
     [{"field": "auth.username", "want": None, "have": "someone"}]),
    ({**RELAY, "tls": {"mode": "encrypt", "ca_file": None}},
     [{"field": "tls.mode", "want": "may", "have": "encrypt"}]),
    (None, [{"field": "smarthost", "want": "relay.acme.example:25", "have": None}]),
])
def test_each_difference_is_named_with_what_is_wanted_and_what_is_there(
        have: dict[str, Any] | None, expected: list[dict[str, Any]]) -> None:
    assert policy.compare(_wanted(), have, True, seen=True) == expected


def test_an_edited_configuration_not_built_is_drift() -> None:
    assert policy.compare(_wanted(), RELAY, False, seen=True) == [
        {"field": "config_in_sync", "want": True, "have": False}]


def test_a_host_that_must_have_no_smarthost_but_has_one_drifted() -> None:
    effective = _combine(_row("host:7", {"smarthost": None}))
    assert policy.compare(effective, RELAY, True, seen=True) == [
        {"field": "smarthost", "want": None, "have": "relay.acme.example:25"}]
    assert policy.compare(effective, None, True, seen=True) == []


def test_the_ca_file_is_compared_only_when_the_policy_names_one() -> None:
    have = {**RELAY, "tls": {"mode": "verify", "ca_file": "/etc/ssl/certs/ca.pem"}}
    assert policy.compare(_wanted(tls={"mode": "verify"}), have, True, seen=True) == []
    wanted = _wanted(tls={"mode": "verify", "ca_file": "/etc/ssl/relay-ca.pem"})
    assert policy.compare(wanted, have, True, seen=True) == [
        {"field": "tls.ca_file", "want": "/etc/ssl/relay-ca.pem",
         "have": "/etc/ssl/certs/ca.pem"}]


def test_hosts_with_the_same_desired_state_share_a_key() -> None:
    one = _wanted(port=2525)
    two = policy.combine(8, 1, [("host:8", _row("host:8", {"smarthost": {
        "host": "relay.acme.example", "port": 2525}}))], {})
    assert one.key() == two.key()
    assert one.key() != _wanted(port=587).key()


def test_a_hand_written_masquerade_is_the_hosts_own_when_no_level_sets_one() -> None:
    have = {**RELAY, "masquerade": {"domain": "acme.example", "envelope": True}}
    assert policy.compare(_wanted(), have, True, seen=True) == []
    # a level that says "no masquerade" (null) is compared
    assert policy.compare(_wanted(masquerade=None), have, True, seen=True) == [
        {"field": "masquerade.domain", "want": None, "have": "acme.example"}]
    other = _wanted(masquerade={"domain": "other.example", "envelope": False})
    assert [d["field"] for d in policy.compare(other, have, True, seen=True) or []] == [
        "masquerade.domain", "masquerade.envelope"]


def test_a_credential_of_another_tenant_is_a_problem_never_used() -> None:
    foreign = Credential(id=4, tenant_id=2, name="globex-relay", username="gx@globex.example")
    effective = _combine(_row("host:7", {"smarthost": {"host": "relay.acme.example",
                                                       "tls": {"mode": "encrypt"}},
                                         "credential": 4}, credential_id=4),
                         credentials={4: foreign})
    assert not effective.complete
    assert effective.problem is not None and "another tenant" in effective.problem
    assert effective.credential_id is None and effective.credential_username is None
    assert policy.compare(effective, RELAY, True, seen=True) is None


def _with_login() -> policy.Effective:
    own = Credential(id=3, tenant_id=1, name="acme-relay", username="pbx@acme.example")
    return _combine(_row("host:7", {"smarthost": {"host": "relay.acme.example"},
                                    "credential": 3}, credential_id=3),
                    credentials={3: own})


def test_a_password_changed_since_the_host_got_it_is_drift_without_the_password() -> None:
    have = {**RELAY, "auth": {"username": "pbx@acme.example"},
            "tls": {"mode": "encrypt", "ca_file": None}}
    effective = _with_login()
    assert policy.compare(effective, have, True, seen=True) == []
    assert policy.compare(effective, have, True, seen=True, password_stale=True) == [
        {"field": "auth.password", "want": policy.STALE_LOGIN_NOTE,
         "have": "the password before the change"}]
    # a new user name already says the host needs the login again
    other = {**have, "auth": {"username": "old@acme.example"}}
    assert [d["field"] for d in policy.compare(effective, other, True, seen=True,
                                               password_stale=True) or []] == ["auth.username"]


def test_a_remediation_keeps_the_hosts_mailer_and_unmanaged_masquerade() -> None:
    have = {**RELAY, "mailer": "esmtp",
            "masquerade": {"domain": "acme.example", "envelope": True}}
    assert policy._kept(_wanted(), have) == {
        "mailer": "esmtp", "masquerade": {"domain": "acme.example", "envelope": True}}
    assert policy._kept(_wanted(masquerade=None), have) == {"mailer": "esmtp"}
    assert policy._kept(_wanted(), RELAY) == {}


def test_a_refused_remediation_job_names_the_option_and_never_the_password(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from unittest import mock

    from shared.errors import ValidationError

    session = mock.Mock()
    session.get.return_value = Credential(id=3, tenant_id=1, name="acme-relay",
                                          username="pbx@acme.example", password_sealed="x")
    box = mock.Mock()
    box.open.return_value = "the-plain-password"
    with pytest.raises(ValidationError) as caught:
        policy.job_body(session, box, _with_login(), [1, 2, 3],
                        {"concurrency": 0, "dry_run": True})
    assert "options.concurrency" in caught.value.errors, caught.value.errors
    seen = repr(caught.value.errors) + caught.value.message + repr(vars(caught.value))
    assert "the-plain-password" not in seen
    assert caught.value.__context__ is None


def test_the_drift_is_left_alone_after_actions_that_cannot_change_it() -> None:
    from unittest import mock

    session = mock.Mock()
    for action in ("read_log", "diagnose", "flush_queue", "queue_list"):
        policy.refresh_drift_after(session, action, 7)
    assert session.mock_calls == []
    assert {"set_smarthost", "remove_smarthost", "collect_status"} <= policy.DRIFT_ACTIONS


def test_a_failed_drift_refresh_is_logged_and_rolled_back_to_its_savepoint(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from unittest import mock

    session = mock.MagicMock()

    def broken(*_: Any) -> None:
        raise RuntimeError("no drift today")

    monkeypatch.setattr(policy, "refresh_drift", broken)
    policy.refresh_drift_after(session, "collect_status", 7)
    session.begin_nested.assert_called_once_with()
    assert "drift not computed" in caplog.text


def test_nested_marshmallow_messages_are_flattened_to_dotted_fields() -> None:
    assert policy._flat_errors({"options": {"canary": ["too many"]},
                                "_schema": ["bad"]}) == {
        "options.canary": ["too many"], "_schema": ["bad"]}
