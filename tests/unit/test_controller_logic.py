"""Pure logic of the controller: status derivation, lanes, secrets, signatures, params."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from controller.auth import Principal
from controller.config import LANE_MARGIN_S, Settings
from controller.crypto import SecretBox, derive_key, sign_callback
from controller.errors import PermissionDenied
from controller.idempotency import request_fingerprint
from controller.job_params import validate_params
from controller.jobs import lanes_for
from controller.ledger import derive_status
from shared.errors import ConfigError, ValidationError


def tally(**states: int) -> dict[str, int]:
    base = dict.fromkeys(("pending", "running", "succeeded", "failed", "unreachable",
                          "skipped"), 0)
    base.update(states)
    base["total"] = sum(v for k, v in base.items() if k != "total")
    return base


@pytest.mark.parametrize(("job", "states", "expected"), [
    ("running", {"succeeded": 3}, "succeeded"),
    ("running", {"succeeded": 2, "unreachable": 1}, "partial"),
    ("running", {"succeeded": 1, "skipped": 2}, "partial"),
    ("running", {"failed": 2, "unreachable": 1}, "failed"),
    ("running", {"skipped": 3}, "failed"),
    ("running", {"succeeded": 1, "pending": 1}, "running"),
    ("queued", {"pending": 3}, "queued"),
    ("cancelled", {"succeeded": 1, "skipped": 2}, "cancelled"),
])
def test_derive_status(job: str, states: dict[str, int], expected: str) -> None:
    assert derive_status(job, tally(**states)) == expected


@pytest.mark.parametrize(("concurrency", "total", "lanes"), [
    (1, 500, 1), (25, 500, 1), (26, 500, 2), (200, 200, 8), (200, 10, 1), (1000, 10000, 40),
    (50, 0, 1)])
def test_lanes_follow_concurrency_not_host_count(concurrency: int, total: int,
                                                 lanes: int) -> None:
    assert lanes_for(concurrency, total, 25) == lanes


def test_lane_threads_come_from_the_environment_within_bounds(tmp_path: Path) -> None:
    from controller.config import load_settings

    base = {"RELAYFLEET_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
            "RELAYFLEET_SECRET_KEY": "k" * 40}
    assert load_settings(base).lane_threads == 100
    assert load_settings({**base, "RELAYFLEET_LANE_THREADS": "100"}).lane_threads == 100
    for bad, says in (("0", "must be positive"), ("many", "must be a whole number"),
                      ("501", "must be at most 500")):
        with pytest.raises(ConfigError, match=f"RELAYFLEET_LANE_THREADS {says}"):
            load_settings({**base, "RELAYFLEET_LANE_THREADS": bad})


def test_secret_box_round_trip_and_wrong_key() -> None:
    box = SecretBox("k" * 32)
    sealed = box.seal("hunter2-secret")
    assert sealed and "hunter2" not in sealed and sealed.startswith("gAAAAA")
    assert box.open(sealed) == "hunter2-secret"
    assert box.seal(None) is None and box.open(None) is None
    with pytest.raises(ConfigError, match="RELAYFLEET_SECRET_KEY"):
        SecretBox("j" * 32).open(sealed)


def test_derived_keys_differ_by_purpose() -> None:
    assert derive_key("k" * 32, "secrets v1") != derive_key("k" * 32, "callbacks v1")
    assert len(derive_key("k" * 32, "x")) == 32


def test_callback_signature_is_hmac_sha256_over_timestamp_and_body() -> None:
    body = b'{"id": 1}'
    expected = hmac.new(b"key", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign_callback(b"key", "1700000000", body) == f"sha256={expected}"
    assert sign_callback(b"key", "1700000001", body) != f"sha256={expected}"


def test_set_smarthost_params_split_out_the_password() -> None:
    public, secret = validate_params(
        "set_smarthost", {"host": "Relay.Example.NET", "port": 587,
                          "auth": {"username": "pbx", "password": "s3cret!"}},
        {"dry_run": False})
    assert public == {"host": "relay.example.net", "port": 587, "mx": False, "mailer": "relay",
                      "auth": {"username": "pbx"}, "tls": {"mode": "encrypt", "ca_file": None}}
    assert secret == {"password": "s3cret!"}


@pytest.mark.parametrize(("action", "params", "options", "field"), [
    ("set_smarthost", {"host": "x')esyscmd(`id')dnl(`"}, {}, "params.host"),
    ("set_smarthost", {"host": "relay.example.net", "dry_run": True}, {}, "params.dry_run"),
    ("flush_queue", {"queue_id": "abc"}, {}, "params.queue_id"),
    ("collect_status", {}, {"dry_run": True}, "options.dry_run"),
    ("read_log", {"lines": 0}, {}, "params.lines"),
])
def test_bad_params(action: str, params: dict[str, object], options: dict[str, object],
                    field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_params(action, params, options)
    assert field in caught.value.errors


def test_fingerprint_ignores_key_order_but_not_values() -> None:
    one = request_fingerprint(b"k", "POST", "/v1/jobs", {"a": 1, "b": [1, 2]})
    assert one == request_fingerprint(b"k", "POST", "/v1/jobs", {"b": [1, 2], "a": 1})
    assert one != request_fingerprint(b"k", "POST", "/v1/jobs", {"a": 2, "b": [1, 2]})
    assert one != request_fingerprint(b"k", "POST", "/v1/hosts", {"a": 1, "b": [1, 2]})
    # keyed: without the key, a stored fingerprint cannot be checked against guesses
    assert one != request_fingerprint(b"j", "POST", "/v1/jobs", {"a": 1, "b": [1, 2]})


def test_roles_rank() -> None:
    viewer = Principal(1, "v", "viewer", 3)
    with pytest.raises(PermissionDenied, match="operator"):
        viewer.require("operator")
    Principal(2, "a", "admin", None).require("operator")
    assert viewer.sees(3) and not viewer.sees(4)
    assert Principal(2, "a", "admin", None).sees(4)


def test_timeout_ceiling_keeps_lanes_inside_the_visibility_timeout() -> None:
    settings = Settings(database_url="sqlite://", visibility_timeout_s=900, lane_budget_s=30)
    assert settings.max_timeout_s == 900 - 30 - LANE_MARGIN_S
    with pytest.raises(ConfigError, match="unknown settings"):
        settings.with_overrides({"nope": 1})
