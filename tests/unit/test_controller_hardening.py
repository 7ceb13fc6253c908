"""Controller hardening: per-tenant callback keys, the secret
key file, key rotation, rate-limited audit of unauthenticated calls, callbacks the sweeper
queues again, soft-deleted hosts, and encrypted SSH keys with too many bcrypt rounds."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from controller.db import db
from controller.models import AuditEvent, Job, Tenant
from shared.errors import ConfigError
from tests.conftest import TEST_SECRET_KEY
from tests.controller_client import Controller

TEST_KEY = TEST_SECRET_KEY  # what the memory_controller fixture seals with


@pytest.fixture
def controller(memory_controller: Controller) -> Controller:
    """A controller on a fresh SQLite file and an in-memory broker."""
    return memory_controller


def _signed_callback(controller: Controller, job_id: int,
                     monkeypatch: pytest.MonkeyPatch) -> tuple[str, bytes, str]:
    """Deliver a job's callback to a fake receiver: (timestamp, body, signature)."""
    from controller import callbacks

    seen: dict[str, Any] = {}

    def post(_settings: Any, _url: str, body: bytes,
             headers: dict[str, str]) -> tuple[bool, str]:
        seen.update(body=body, headers=headers)
        return True, "HTTP 204"

    monkeypatch.setattr(callbacks, "post", post)
    with controller.app.app_context():
        assert callbacks.deliver(db, controller.app.config["RELAYFLEET_SETTINGS"], job_id, 1)
    headers = seen["headers"]
    return headers["X-Relayfleet-Timestamp"], seen["body"], headers["X-Relayfleet-Signature"]


def _job_with_callback(controller: Controller, tenant: int, token: str) -> int:
    site = controller.site(tenant, f"site-{tenant}")
    controller.host(site, f"pbx-{tenant}")
    return controller.start_job({"action": "collect_status", "target": {"all": True},
                                 "callback_url": "https://hooks.example.net/relayfleet"},
                                token)


# -- per-tenant callback keys -------------------------------------------------

def test_each_tenant_signs_its_callbacks_with_its_own_key(
        controller: Controller, monkeypatch: pytest.MonkeyPatch) -> None:
    from controller.crypto import sign_callback

    made = {name: controller.ok("POST", "/v1/tenants", {"name": name})
            for name in ("Acme", "Globex")}
    secrets = {name: doc["callback_secret"] for name, doc in made.items()}
    assert len(set(secrets.values())) == 2 and all(len(s) >= 32 for s in secrets.values())
    signed = {}
    for name, doc in made.items():
        job = _job_with_callback(controller, doc["id"], controller.issue("operator", doc["id"]))
        signed[name] = _signed_callback(controller, job, monkeypatch)
    for name, (stamp, body, signature) in signed.items():
        other = "Globex" if name == "Acme" else "Acme"
        assert sign_callback(secrets[name].encode(), stamp, body) == signature
        # the other tenant's secret (or the controller-wide key) does not verify it
        assert sign_callback(secrets[other].encode(), stamp, body) != signature
    from controller.callbacks import callback_key

    wide = callback_key(controller.app.config["RELAYFLEET_SETTINGS"])
    stamp, body, signature = signed["Acme"]
    assert sign_callback(wide, stamp, body) != signature


def test_callback_secret_is_shown_once_and_rotated_by_msp_admins_only(
        controller: Controller, monkeypatch: pytest.MonkeyPatch) -> None:
    from controller.crypto import sign_callback

    made = controller.ok("POST", "/v1/tenants", {"name": "Acme"})
    tenant, first = made["id"], made["callback_secret"]
    for doc in (controller.ok("GET", f"/v1/tenants/{tenant}"),
                controller.ok("GET", "/v1/tenants")["items"][0]):
        assert "callback_secret" not in doc and first not in str(doc)
    tenant_admin = controller.issue("admin", tenant)
    refused = controller.post(f"/v1/tenants/{tenant}/callback-secret", token=tenant_admin)
    assert refused.status == 403
    rotated = controller.ok("POST", f"/v1/tenants/{tenant}/callback-secret")
    assert rotated["tenant_id"] == tenant and rotated["callback_secret"] != first
    job = _job_with_callback(controller, tenant, controller.issue("operator", tenant))
    stamp, body, signature = _signed_callback(controller, job, monkeypatch)
    assert sign_callback(rotated["callback_secret"].encode(), stamp, body) == signature
    assert sign_callback(first.encode(), stamp, body) != signature
    audit = controller.ok("GET", "/v1/audit")["items"]
    assert any(a["action"] == "POST /v1/tenants/{tenant_id}/callback-secret"
               and a["outcome"] == 200 for a in audit)
    assert rotated["callback_secret"] not in str(audit) and first not in str(audit)
    with controller.app.app_context():
        sealed = db.session.scalar(select(Tenant.callback_key_sealed))
    assert sealed and rotated["callback_secret"] not in sealed


def test_a_tenant_made_before_per_tenant_keys_gets_its_own(
        controller: Controller, monkeypatch: pytest.MonkeyPatch) -> None:
    from controller.callbacks import callback_key
    from controller.crypto import sign_callback

    tenant = controller.tenant("Old")
    with controller.app.app_context(), db.transaction() as session:
        session.execute(update(Tenant).values(callback_key_sealed=None))
    job = _job_with_callback(controller, tenant, controller.issue("operator", tenant))
    stamp, body, signature = _signed_callback(controller, job, monkeypatch)
    assert sign_callback(callback_key(controller.app.config["RELAYFLEET_SETTINGS"]),
                         stamp, body) != signature
    secret = controller.ok("POST", f"/v1/tenants/{tenant}/callback-secret")["callback_secret"]
    stamp, body, signature = _signed_callback(controller, job, monkeypatch)
    assert sign_callback(secret.encode(), stamp, body) == signature


# -- unauthenticated calls ------------------------------------------------------

def test_a_flood_of_bad_tokens_writes_one_row_per_window(controller: Controller) -> None:
    def audit_rows() -> int:
        with controller.app.app_context():
            return int(db.session.scalar(select(func.count()).select_from(AuditEvent)) or 0)

    before = audit_rows()
    for n in range(200):
        assert controller.post("/v1/tenants", {"name": f"x{n}"}, token="rft_bad_x").status == 401
    assert audit_rows() == before + 1
    with controller.app.app_context():
        row = db.session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc())).first()
    assert row is not None and row.outcome == 401 and row.token_id is None
    # the window ends: the 199 counted calls become one summary row
    tally = controller.app.extensions["relayfleet_unauthenticated"]
    tally.window_s = 0.0
    controller.post("/v1/tenants", {"name": "y"}, token="rft_bad_x")
    with controller.app.app_context():
        rows = list(db.session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc())
                                       .limit(2)))
    summary = next(r for r in rows if r.action == "unauthenticated calls (summary)")
    assert summary.detail is not None and summary.detail["count"] == 199


def test_the_tally_bounds_the_addresses_it_tracks() -> None:
    from controller.app import UnauthenticatedTally

    tally = UnauthenticatedTally(window_s=60, max_addresses=2)
    assert [tally.refused(f"10.0.0.{n}", 0.0) for n in range(4)] == [True, True, True, False]
    assert tally.ended(30.0) == []
    ended = dict(tally.ended(61.0))
    assert set(ended) == {"*"} and ended["*"].counted == 1


# -- the secret key -------------------------------------------------------------

def test_an_empty_or_short_secret_key_is_refused(tmp_path: Path) -> None:
    from controller.config import _secret_key

    (tmp_path / "secret.key").write_text("\n")
    with pytest.raises(ConfigError, match=r"secret\.key is empty"):
        _secret_key({}, tmp_path)
    (tmp_path / "secret.key").write_text("short\n")
    with pytest.raises(ConfigError, match="too short"):
        _secret_key({}, tmp_path)
    with pytest.raises(ConfigError, match="RELAYFLEET_SECRET_KEY is too short"):
        _secret_key({"RELAYFLEET_SECRET_KEY": "abc"}, tmp_path)


def test_starters_racing_for_the_key_file_all_end_with_one_key(tmp_path: Path) -> None:
    from controller.config import _secret_key

    def starter(data: Path, start: threading.Barrier, keys: list[str],
                errors: list[BaseException]) -> None:
        start.wait()
        try:
            keys.append(_secret_key({}, data))
        except BaseException as exc:
            errors.append(exc)

    for attempt in range(20):
        data = tmp_path / f"data{attempt}"
        keys: list[str] = []
        errors: list[BaseException] = []
        start = threading.Barrier(8)
        threads = [threading.Thread(target=starter, args=(data, start, keys, errors))
                   for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [] and len(keys) == 8 and len(set(keys)) == 1 and len(keys[0]) >= 32
        assert (data / "secret.key").stat().st_mode & 0o777 == 0o600
        assert [p.name for p in data.iterdir()] == ["secret.key"]


# -- key rotation ---------------------------------------------------------------

def test_rotate_secret_key_reseals_every_secret_and_is_idempotent(
        controller: Controller, monkeypatch: pytest.MonkeyPatch) -> None:
    from controller.cli import rotate_secret_key
    from controller.config import load_settings
    from controller.crypto import SecretBox

    site = controller.site(controller.tenant("Acme"), "Leeds")
    controller.host(site, "pbx1")
    job = controller.start_job({"action": "set_smarthost", "target": {"all": True},
                                "params": {"host": "relay.example.net",
                                           "auth": {"username": "u", "password": "pw-1"}}})
    new_key = "n" * 43 + "="
    monkeypatch.setenv("RELAYFLEET_SECRET_KEY", new_key)
    monkeypatch.setenv("RELAYFLEET_SECRET_KEY_OLD", TEST_KEY)
    settings = load_settings()
    counts = rotate_secret_key(settings, batch=1)
    assert counts["hosts.agent_token_sealed"] == 1 and counts["jobs.params_sealed"] == 1
    assert counts["tenants.callback_key_sealed"] == 1 and counts["already current"] == 0
    again = rotate_secret_key(settings)
    assert sum(v for k, v in again.items() if k != "already current") == 0
    assert again["already current"] == 3
    with controller.app.app_context():
        sealed = db.session.scalar(select(Job.params_sealed).where(Job.id == job))
    assert SecretBox(new_key).open(sealed) == '{"password": "pw-1"}'
    with pytest.raises(ConfigError):
        SecretBox(TEST_KEY).open(sealed)


def test_old_keys_still_open_secrets_until_rotated() -> None:
    from controller.crypto import SecretBox

    sealed = SecretBox("o" * 32).seal("s3cret")
    assert SecretBox("n" * 32, ["o" * 32]).open(sealed) == "s3cret"
    with pytest.raises(ConfigError, match="RELAYFLEET_SECRET_KEY_OLD"):
        SecretBox("n" * 32).open(sealed)


# -- callbacks that never reached the queue -----------------------------------

def test_the_sweeper_queues_again_a_callback_that_never_reached_the_queue(
        controller: Controller, monkeypatch: pytest.MonkeyPatch) -> None:
    from controller import dispatch, lanes, ledger, tasks

    tenant = controller.tenant("Acme")
    job = _job_with_callback(controller, tenant, controller.issue("operator", tenant))
    with controller.app.app_context(), db.transaction() as session:
        session.execute(update(Job).where(Job.id == job).values(
            status="succeeded", finished_at=func.current_timestamp(),
            callback_state="not sent: the job queue was unreachable"))
    sent: list[tuple[str, tuple[Any, ...]]] = []
    monkeypatch.setattr(dispatch, "send", lambda task, *args, **_: sent.append((task, args)))
    monkeypatch.setattr(lanes, "sweep", lambda *_: [])
    with controller.app.app_context():
        tasks.sweep()
        tasks.sweep()  # a second sweep does not queue it twice
        state = db.session.scalar(select(Job.callback_state).where(Job.id == job))
    assert sent == [(dispatch.SEND_CALLBACK, (job,))]
    assert state == "queued again by the sweeper"
    assert ledger.CALLBACK_NOT_QUEUED == "not sent: the job queue was unreachable"


# -- encrypted SSH keys -----------------------------------------------------------

def test_ssh_keys_with_too_many_bcrypt_rounds_are_refused_before_decrypting(
        tmp_path: Path) -> None:
    from marshmallow import ValidationError

    from controller.schemas import MAX_KEY_KDF_ROUNDS, SshAccessSchema, _bcrypt_rounds

    path = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "pw", "-a",
                    str(MAX_KEY_KDF_ROUNDS + 1), "-f", str(path)], check=True)
    text = path.read_text()
    assert _bcrypt_rounds(text) == MAX_KEY_KDF_ROUNDS + 1
    # a big round count written into a key's header: refused without being decrypted
    # (decrypting this one would take minutes)
    import base64
    import struct

    lines = text.strip().splitlines()
    blob = bytearray(base64.b64decode("".join(lines[1:-1])))
    at = blob.index(b"bcrypt") + len(b"bcrypt")
    (options_length, salt_length) = struct.unpack_from(">II", blob, at)
    struct.pack_into(">I", blob, at + 8 + salt_length, 2 ** 31)
    huge = "\n".join([lines[0], base64.b64encode(bytes(blob)).decode(), lines[-1]]) + "\n"
    assert options_length == 4 + salt_length + 4
    body = {"username": "root", "private_key": huge, "passphrase": "pw",
            "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0"
                        "dh2l9GKJl"}
    with pytest.raises(ValidationError, match="bcrypt rounds"):
        SshAccessSchema().load(body)
    with pytest.raises(ValidationError, match="bcrypt rounds"):
        SshAccessSchema().load({**body, "private_key": text})
