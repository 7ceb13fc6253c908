"""Answers dumped straight from rows: hosts, the fleet and new tokens (no database)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from controller.inventory import IssuedToken
from controller.models import Host, HostTag, Token
from controller.schemas import FleetHostSchema, HostPageSchema, HostSchema, TokenSchema

NOW = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
WHEN = "2024-05-01T12:00:00+00:00"
NEVER_SEEN = {"seen_at": None, "reachable": None, "error": None, "job_id": None,
              "queue_count": None, "smarthost": None, "config_in_sync": None,
              "mta_running": None, "mta_kind": None, "queue_oldest_age_s": None,
              "causes": None, "unreachable_streak": None}


def make_host(**columns: Any) -> Host:
    """A host row in memory, with the column values the database would fill in."""
    values: dict[str, Any] = {
        "id": 7, "tenant_id": 2, "site_id": 3, "name": "pbx01", "address": "10.0.0.5",
        "transport": "agent", "ssh_port": 22, "ssh_sudo": False, "mta_kind": "sendmail",
        "mta_flavour": "debian", "mta_overrides": {}, "created_at": NOW}
    values.update(columns)
    host = Host(**values)
    host.tag_rows = [HostTag(tag="a"), HostTag(tag="b")]
    return host


def test_agent_host_shows_whether_a_token_is_stored_never_the_token() -> None:
    host = make_host(agent_url="https://10.0.0.5:8587", agent_token_sealed="gAAAA-sealed")
    assert HostSchema().dump(host) == {
        "id": 7, "name": "pbx01", "tenant_id": 2, "site_id": 3, "address": "10.0.0.5",
        "transport": "agent",
        "agent": {"url": "https://10.0.0.5:8587", "ca_cert": None, "has_token": True},
        "ssh": None, "mta": {"kind": "sendmail", "flavour": "debian", "overrides": {}},
        "tags": ["a", "b"], "created_at": WHEN, "last": NEVER_SEEN}


def test_agent_without_a_stored_token_says_so() -> None:
    # an SSH host may keep an agent URL without a token (the token is only required for
    # the agent transport)
    host = make_host(transport="ssh", agent_url="https://10.0.0.5:8587",
                     agent_ca_cert="-----BEGIN CERTIFICATE-----", ssh_username="root",
                     ssh_host_key="ssh-ed25519 AAAA", ssh_private_key_sealed="gAAAA-key")
    doc = HostSchema().dump(host)
    assert doc["agent"] == {"url": "https://10.0.0.5:8587",
                            "ca_cert": "-----BEGIN CERTIFICATE-----", "has_token": False}


def test_ssh_host_shows_key_or_password_auth_never_the_secret() -> None:
    key = make_host(transport="ssh", ssh_username="root", ssh_host_key="ssh-ed25519 AAAA",
                    ssh_private_key_sealed="gAAAA-key", ssh_passphrase_sealed="gAAAA-pass")
    password = make_host(transport="ssh", ssh_username="admin", ssh_port=2222, ssh_sudo=True,
                         ssh_host_key="ssh-ed25519 BBBB", ssh_password_sealed="gAAAA-pw")
    assert HostSchema().dump(key)["ssh"] == {"port": 22, "username": "root",
                                             "host_key": "ssh-ed25519 AAAA", "sudo": False,
                                             "auth": "key"}
    assert HostSchema().dump(password)["ssh"] == {"port": 2222, "username": "admin",
                                                  "host_key": "ssh-ed25519 BBBB", "sudo": True,
                                                  "auth": "password"}
    assert HostSchema().dump(key)["agent"] is None
    for doc in (HostSchema().dump(key), HostSchema().dump(password)):
        assert "gAAAA" not in repr(doc)


def test_last_known_state_and_profile_come_from_the_row() -> None:
    host = make_host(agent_url="https://a", agent_token_sealed="t", mta_kind="auto",
                     mta_flavour="rhel", mta_overrides={"restart": "/bin/true"},
                     last_seen_at=NOW, last_reachable=False, last_error="timed out",
                     last_job_id=4, queue_count=3, smarthost={"host": "relay.example.net"},
                     config_in_sync=True, mta_running=False, mta_detected_kind="postfix",
                     queue_oldest_age_s=600, unreachable_streak=2,
                     causes=[{"cause": "auth_failed", "count": 3, "sample": "535 5.7.8"}],
                     drift=[{"field": "port", "want": 587, "have": 25}])
    last = {"seen_at": WHEN, "reachable": False, "error": "timed out", "job_id": 4,
            "queue_count": 3, "smarthost": {"host": "relay.example.net"},
            "config_in_sync": True, "mta_running": False, "mta_kind": "postfix",
            "queue_oldest_age_s": 600, "unreachable_streak": 2,
            "causes": [{"cause": "auth_failed", "count": 3, "sample": "535 5.7.8"}]}
    doc = HostSchema().dump(host)
    # configured in mta.kind, found running in last.mta_kind
    assert doc["mta"] == {"kind": "auto", "flavour": "rhel",
                          "overrides": {"restart": "/bin/true"}}
    assert doc["last"] == last
    assert FleetHostSchema().dump(host) == {"host_id": 7, "name": "pbx01", "tenant_id": 2,
                                            "site_id": 3, "transport": "agent",
                                            "mta_kind": "auto", "last": last,
                                            "drift": [{"field": "port", "want": 587,
                                                       "have": 25}], "drifted": True}


def test_a_page_dumps_its_rows() -> None:
    host = make_host(agent_url="https://a", agent_token_sealed="t")
    page = HostPageSchema().dump({"items": [host], "total": 1, "limit": 100, "offset": 0})
    assert page == {"items": [HostSchema().dump(host)], "total": 1, "limit": 100, "offset": 0}


def test_the_secret_is_in_the_creation_answer_only() -> None:
    row = Token(id=1, name="ci", role="operator", tenant_id=None, created_at=NOW,
                last_used_at=None, revoked_at=None, public_id="p", secret_sha256="0" * 64)
    listed = {"id": 1, "name": "ci", "role": "operator", "tenant_id": None,
              "created_at": WHEN, "last_used_at": None, "revoked_at": None}
    assert TokenSchema().dump(row) == listed
    assert TokenSchema().dump(IssuedToken(row, "rf_secret")) == {**listed, "token": "rf_secret"}
