"""The routes the operator CLI relies on beyond CRUD: ``GET /v1/whoami``,
``POST /v1/ssh/host-key-scan`` and ``PUT /v1/hosts/{id}/ssh/host-key`` (SQLite, in-memory
broker, real sockets on loopback; the scan of a lab host's real sshd is in
tests/integration/test_controller_ssh_scan.py)."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
from typing import Any
from urllib.parse import quote

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from controller.db import db
from controller.models import Host, Token
from shared import __version__
from tests.controller_client import Controller
from tests.loopback import free_loopback_port, listener, ssh_server

SSH_PASSWORD = "ssh-password-Zq8!x"
PIN_ROUTE = "PUT /v1/hosts/{host_id}/ssh/host-key"


def new_key_line() -> str:
    """A fresh ed25519 public key as ``ssh-ed25519 BASE64``."""
    public = Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH,
                               serialization.PublicFormat.OpenSSH).decode()


def sha256_fingerprint(line: str) -> str:
    """What ``ssh-keygen -lf`` prints for a key line, computed here from the blob."""
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


@pytest.fixture
def controller(memory_controller: Controller) -> Controller:
    """A controller on a fresh SQLite file and an in-memory broker (default egress)."""
    return memory_controller


@pytest.fixture
def loopback_controller(memory_controller: Controller) -> Controller:
    """The same database, with an egress policy that lets the controller dial loopback."""
    return Controller.create(egress_allow="loopback")


def token_row(controller: Controller, text: str) -> Token:
    """The stored row of a token text (``rft_<public id>_<secret>``)."""
    public_id = text.removeprefix("rft_").partition("_")[0]
    with controller.app.app_context():
        row = db.session.scalar(select(Token).where(Token.public_id == public_id))
        assert row is not None
        db.session.expunge(row)
        return row


def audit_rows(controller: Controller, action: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = controller.ok(
        "GET", f"/v1/audit?action={quote(action)}")["items"]
    return items


# -- GET /v1/whoami ------------------------------------------------------------------------

@pytest.mark.parametrize("role", ["admin", "operator", "viewer"])
def test_whoami_names_an_msp_wide_token(controller: Controller, role: str) -> None:
    token = controller.issue(role)
    row = token_row(controller, token)
    doc = controller.ok("GET", "/v1/whoami", token=token)
    assert doc == {"token_id": row.id, "name": row.name, "role": role, "tenant_id": None,
                   "tenant": None, "version": __version__}


@pytest.mark.parametrize("role", ["admin", "viewer"])
def test_whoami_names_the_tenant_of_a_scoped_token(controller: Controller, role: str) -> None:
    controller.tenant("Globex")
    acme = controller.tenant("Acme Dental")
    token = controller.issue(role, tenant_id=acme)
    doc = controller.ok("GET", "/v1/whoami", token=token)
    assert doc["role"] == role
    assert doc["token_id"] == token_row(controller, token).id
    assert (doc["tenant_id"], doc["tenant"]) == (acme, "Acme Dental")


def test_whoami_of_a_token_made_through_the_api(controller: Controller) -> None:
    made = controller.ok("POST", "/v1/tokens", {"name": "ops laptop", "role": "operator"})
    doc = controller.ok("GET", "/v1/whoami", token=made["token"])
    assert (doc["token_id"], doc["name"], doc["role"]) == (made["id"], "ops laptop",
                                                           "operator")


def test_whoami_refuses_wrong_missing_and_revoked_tokens(controller: Controller) -> None:
    token = controller.issue("viewer")
    wrong = token[:-4] + ("aaaa" if not token.endswith("aaaa") else "bbbb")
    answer = controller.get("/v1/whoami", token=wrong)
    assert answer.status == 401 and "bearer token" in answer.json["message"], answer
    assert controller.client.get("/v1/whoami").status_code == 401
    controller.ok("DELETE", f"/v1/tokens/{token_row(controller, token).id}")
    assert controller.get("/v1/whoami", token=token).status == 401


# -- POST /v1/ssh/host-key-scan --------------------------------------------------------------

@pytest.mark.parametrize(("address", "why"), [
    ("127.0.0.1", "loopback"), ("localhost", "loopback"), ("::1", "loopback"),
    ("[127.0.0.1]", "loopback"), ("169.254.169.254", "link-local"),
    ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast")])
def test_scan_refused_by_the_default_egress_policy(controller: Controller, address: str,
                                                   why: str) -> None:
    answer = controller.post("/v1/ssh/host-key-scan", {"address": address})
    assert answer.status == 422, answer
    reason = " ".join(answer.json["errors"]["address"])
    assert "egress policy" in reason and why in reason and "RELAYFLEET_EGRESS_ALLOW" in reason


def test_scan_refused_outside_an_egress_allow_list(memory_controller: Controller) -> None:
    narrowed = Controller.create(egress_allow="192.0.2.0/24")
    answer = narrowed.post("/v1/ssh/host-key-scan", {"address": "198.51.100.7", "port": 2222})
    assert answer.status == 422, answer
    assert "not in RELAYFLEET_EGRESS_ALLOW" in answer.json["errors"]["address"][0]


@pytest.mark.parametrize(("body", "field"), [
    ({"address": "not a host"}, "address"),
    ({"address": "esmtp:relay.example.com"}, "address"),
    ({"address": "bad..example.com"}, "address"),
    ({"address": ""}, "address"),
    ({"address": "192.0.2.5", "port": 0}, "port"),
    ({"address": "192.0.2.5", "port": 65536}, "port"),
    ({"address": "192.0.2.5", "port": "22"}, "port"),
    ({"address": "192.0.2.5", "port": 22.5}, "port"),
    ({"address": "192.0.2.5", "user": "root"}, "user"),
    ({"port": 22}, "address"),
])
def test_scan_refuses_bad_input(controller: Controller, body: dict[str, Any],
                                field: str) -> None:
    answer = controller.post("/v1/ssh/host-key-scan", body)
    assert answer.status == 422, answer
    assert field in answer.json["errors"], answer


@pytest.mark.parametrize("role", ["operator", "viewer"])
def test_scan_needs_an_admin_token(controller: Controller, role: str) -> None:
    answer = controller.post("/v1/ssh/host-key-scan", {"address": "192.0.2.5"},
                             token=controller.issue(role))
    assert answer.status == 403 and "admin" in answer.json["message"], answer


def test_scan_of_a_closed_port_is_502_naming_it(loopback_controller: Controller) -> None:
    port = free_loopback_port()
    answer = loopback_controller.post("/v1/ssh/host-key-scan", {"address": "127.0.0.1",
                                                                "port": port})
    assert answer.status == 502, answer
    message = answer.json["message"]
    assert f"127.0.0.1:{port}" in message and "connection refused" in message, message
    assert "sshd" in message and "firewall" in message, message
    row, = audit_rows(loopback_controller, "POST /v1/ssh/host-key-scan")
    assert (row["target"], row["outcome"], row["detail"]) == ("address:127.0.0.1", 502,
                                                             {"port": port})


def test_scan_of_a_port_that_does_not_speak_ssh_is_502(
        loopback_controller: Controller) -> None:
    def http(conn: socket.socket) -> None:
        with conn:
            conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

    with listener(http) as port:
        answer = loopback_controller.post("/v1/ssh/host-key-scan",
                                          {"address": "127.0.0.1", "port": port})
    assert answer.status == 502, answer
    assert f"127.0.0.1:{port}" in answer.json["message"]
    assert "SSH handshake" in answer.json["message"], answer


def test_scan_answers_the_key_an_ssh_server_offers(loopback_controller: Controller) -> None:
    """paramiko's own server side: a real SSH handshake, with a key made here."""
    host_key = paramiko.ECDSAKey.generate()
    line = f"{host_key.get_name()} {host_key.get_base64()}"
    tenant = loopback_controller.tenant("Acme")
    tenant_admin = loopback_controller.issue("admin", tenant_id=tenant)
    with ssh_server(host_key) as port:
        doc = loopback_controller.ok("POST", "/v1/ssh/host-key-scan",
                                     {"address": "localhost", "port": port},
                                     token=tenant_admin)
    assert doc == {"address": "localhost", "port": port, "host_key": line,
                   "fingerprint": sha256_fingerprint(line)}
    row, = audit_rows(loopback_controller, "POST /v1/ssh/host-key-scan")
    assert row["tenant_id"] == tenant and row["outcome"] == 200
    assert row["detail"] == {"port": port, "fingerprint": sha256_fingerprint(line)}


# -- PUT /v1/hosts/{id}/ssh/host-key ----------------------------------------------------------

def ssh_host(controller: Controller, site: int, name: str, host_key: str) -> dict[str, Any]:
    """An SSH host with a password login (no key to make)."""
    doc: dict[str, Any] = controller.ok("POST", "/v1/hosts", {
        "name": name, "site_id": site, "address": "192.0.2.20", "transport": "ssh",
        "ssh": {"username": "root", "password": SSH_PASSWORD, "host_key": host_key,
                "sudo": True, "port": 2222}, "mta": {"kind": "auto"}})
    return doc


def test_pin_a_new_host_key_keeps_the_login(controller: Controller) -> None:
    site = controller.site(controller.tenant("Acme"), "Leeds")
    old_key, new_key = new_key_line(), new_key_line()
    host = ssh_host(controller, site, "pbx-1", old_key)
    with controller.app.app_context():
        row = db.session.get(Host, host["id"])
        assert row is not None
        sealed_password = row.ssh_password_sealed
        row.mta_detected_kind = "postfix"  # what a job found before the reinstall
        db.session.commit()

    doc = controller.ok("PUT", f"/v1/hosts/{host['id']}/ssh/host-key",
                        {"host_key": f"{new_key}  root@pbx-1 reinstalled\n"})
    assert doc["ssh"] == {"port": 2222, "username": "root", "host_key": new_key,
                          "sudo": True, "auth": "password"}
    assert doc["last"]["mta_kind"] is None  # the reinstalled host is detected again
    assert controller.ok("GET", f"/v1/hosts/{host['id']}")["ssh"]["host_key"] == new_key
    with controller.app.app_context():
        row = db.session.get(Host, host["id"])
        assert row is not None and row.ssh_password_sealed == sealed_password

    row_doc, = audit_rows(controller, PIN_ROUTE)
    assert (row_doc["target"], row_doc["outcome"]) == (f"host:{host['id']}", 200)
    assert row_doc["detail"] == {"change": "ssh host key pinned",
                                 "old_fingerprint": sha256_fingerprint(old_key),
                                 "new_fingerprint": sha256_fingerprint(new_key)}
    assert new_key.split()[1] not in json.dumps(row_doc)
    assert SSH_PASSWORD not in json.dumps(row_doc)


@pytest.mark.parametrize("host_key", [
    "ssh-ed25519", "ssh-ed25519 AAAA!!!!", "ssh-ed25519 " + base64.b64encode(b"x" * 40).decode(),
    "not-a-type AAAAC3NzaC1lZDI1NTE5", ""])
def test_pin_refuses_a_key_that_does_not_parse(controller: Controller, host_key: str) -> None:
    site = controller.site(controller.tenant("Acme"), "Leeds")
    old_key = new_key_line()
    host = ssh_host(controller, site, "pbx-1", old_key)
    answer = controller.call("PUT", f"/v1/hosts/{host['id']}/ssh/host-key",
                             body={"host_key": host_key})
    assert answer.status == 422 and "host_key" in answer.json["errors"], answer
    assert controller.ok("GET", f"/v1/hosts/{host['id']}")["ssh"]["host_key"] == old_key


def test_pin_refuses_an_agent_host(controller: Controller) -> None:
    site = controller.site(controller.tenant("Acme"), "Leeds")
    host = controller.host(site, "pbx-agent")
    answer = controller.call("PUT", f"/v1/hosts/{host['id']}/ssh/host-key",
                             body={"host_key": new_key_line()})
    assert answer.status == 422, answer
    assert "agent transport" in answer.json["message"] and "SSH host" in answer.json["message"]
    assert controller.ok("GET", f"/v1/hosts/{host['id']}")["ssh"] is None


def test_pin_is_tenant_scoped_and_admin_only(controller: Controller) -> None:
    acme, globex = controller.tenant("Acme"), controller.tenant("Globex")
    key = new_key_line()
    theirs = ssh_host(controller, controller.site(globex, "Paris"), "pbx-g", key)
    ours = ssh_host(controller, controller.site(acme, "Leeds"), "pbx-a", key)
    acme_admin = controller.issue("admin", tenant_id=acme)
    new = new_key_line()
    answer = controller.call("PUT", f"/v1/hosts/{theirs['id']}/ssh/host-key", acme_admin,
                             {"host_key": new})
    assert answer.status == 404, answer
    assert controller.ok("GET", f"/v1/hosts/{theirs['id']}")["ssh"]["host_key"] == key
    assert controller.call("PUT", "/v1/hosts/999999/ssh/host-key", None,
                           {"host_key": new}).status == 404
    for role in ("operator", "viewer"):
        answer = controller.call("PUT", f"/v1/hosts/{ours['id']}/ssh/host-key",
                                 controller.issue(role, tenant_id=acme), {"host_key": new})
        assert answer.status == 403, answer
    doc = controller.ok("PUT", f"/v1/hosts/{ours['id']}/ssh/host-key", {"host_key": new},
                        token=acme_admin)
    assert doc["ssh"]["host_key"] == new
    outcomes = sorted(r["outcome"] for r in audit_rows(controller, PIN_ROUTE))
    assert outcomes == [200, 403, 403, 404, 404]


# -- the generated reference -----------------------------------------------------------------

def test_openapi_and_docs_list_the_routes(controller: Controller) -> None:
    spec = controller.ok("GET", "/openapi.json")
    paths = spec["paths"]
    assert set(paths["/v1/whoami"]) == {"get"}
    assert "200" in paths["/v1/ssh/host-key-scan"]["post"]["responses"]
    assert "502" in paths["/v1/ssh/host-key-scan"]["post"]["responses"]
    assert "put" in paths["/v1/hosts/{host_id}/ssh/host-key"]
    schemas = spec["components"]["schemas"]
    assert set(schemas["Whoami"]["properties"]) == {"token_id", "name", "role", "tenant_id",
                                                   "tenant", "version"}
    assert set(schemas["HostKeyScanResult"]["properties"]) == {"address", "port",
                                                               "host_key", "fingerprint"}
    page = controller.client.get("/docs", headers={
        "Authorization": f"Bearer {controller.admin}"}).get_data(as_text=True)
    for path in ("/v1/whoami", "/v1/ssh/host-key-scan", "/v1/hosts/{host_id}/ssh/host-key"):
        assert f"<code>{path}</code>" in page
