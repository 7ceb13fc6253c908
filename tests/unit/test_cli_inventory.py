"""The CLI's inventory and account commands, and its import parser.

The commands run against the real controller app in-process (SQLite, in-memory broker):
click's CliRunner drives ``relayfleet`` and its API client reaches the app through
httpx's WSGI transport, so every call crosses the real API. Host-key scans talk to a real
SSH handshake (paramiko's server side) on loopback.
"""

from __future__ import annotations

import csv
import io
import json
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import httpx
import paramiko
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.client import config, importer
from controller.client.api import ApiClient
from controller.client.config import Connection
from controller.client.context import Cli
from controller.client.errors import CliError
from controller.client.main import cli
from tests.controller_client import Controller
from tests.loopback import ssh_server

AGENT_TOKEN = "agent-token-0123456789abcdef"
SSH_PASSWORD = "ssh-password-Zq8!x"


# -- helpers --------------------------------------------------------------------------------

@dataclass
class Run:
    """One ``relayfleet`` invocation: exit code, stdout, stderr (with the error printed as
    ``main()`` prints it)."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run(controller: Controller, token: str | None, *args: str, stdin: str | None = None,
        env: dict[str, str] | None = None) -> Run:
    """``relayfleet ARGS`` with ``token``, against ``controller``; the exit code is the
    one ``main()`` would exit with."""
    client = ApiClient(Connection(api="http://controller", token=token or controller.admin,
                                  source="test"),
                       transport=httpx.WSGITransport(app=controller.app), retries=0)
    result = CliRunner().invoke(cli, list(args), obj=Cli(_api=client), input=stdin,
                                standalone_mode=False, catch_exceptions=True,
                                env={"COLUMNS": "250", "NO_COLOR": "1", **(env or {})})
    error, err = result.exception, result.stderr
    if isinstance(error, CliError):
        code = error.exit_code
        err += f"relayfleet: {error.message}\n" + "".join(
            f"  {key}: {value}\n" for key, value in getattr(error, "errors", {}).items())
        err += f"  try: {error.hint}\n" if error.hint else ""
    elif isinstance(error, click.ClickException):
        code, err = 2, err + error.format_message()
    elif isinstance(error, SystemExit):
        code = int(error.code or 0)
    elif error is not None:
        raise error
    else:
        code = result.return_value if isinstance(result.return_value, int) else 0
    return Run(code, result.stdout, err)


def key_line(key: Ed25519PrivateKey | None = None) -> str:
    """An ed25519 public key line (``ssh-ed25519 BASE64``)."""
    public = (key or Ed25519PrivateKey.generate()).public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH,
                               serialization.PublicFormat.OpenSSH).decode()


def private_key_text() -> str:
    """A fresh ed25519 private key in OpenSSH format."""
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()).decode()


def host_names(controller: Controller) -> list[str]:
    return sorted(h["name"] for h in controller.ok("GET", "/v1/hosts")["items"])


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No settings of the machine running the tests: its own config and data homes."""
    for name in (config.ENV_API, config.ENV_TOKEN, config.ENV_PROFILE, "RELAYFLEET_CA_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data-home"))


@pytest.fixture
def controller(memory_controller: Controller) -> Controller:
    return memory_controller


@pytest.fixture
def acme(controller: Controller) -> dict[str, int]:
    """Tenant Acme with sites lyon and paris; tenant Globex with a site also named lyon."""
    tenant = controller.tenant("Acme")
    globex = controller.tenant("Globex")
    return {"tenant": tenant, "lyon": controller.site(tenant, "lyon"),
            "paris": controller.site(tenant, "paris"), "globex": globex,
            "globex_lyon": controller.site(globex, "lyon")}


def paramiko_line(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.get_base64()}"


def fingerprint(line: str) -> str:
    """The key's SHA256 fingerprint (as the CLI shows it)."""
    found = importer.key_fingerprint(line)
    assert found is not None, line
    return found


# -- the import parser (pure) -------------------------------------------------------------------

def write_fleet(directory: Path, rows: list[str], header: str | None = None) -> Path:
    """A CSV with key and token files beside it (names relative to its directory)."""
    (directory / "keys").mkdir(parents=True, exist_ok=True)
    (directory / "keys" / "fleet").write_text(private_key_text())
    (directory / "keys" / "fleet.pub").write_text(key_line() + "\n")
    (directory / "tokens").mkdir(exist_ok=True)
    (directory / "tokens" / "lyon1").write_text(AGENT_TOKEN + "\n")
    (directory / "ssh.password").write_text(SSH_PASSWORD + "\n")
    path = directory / "fleet.csv"
    path.write_text("\n".join([header or (
        "Name,Site,Address,Transport,agent_url,agent_token_file,agent_insecure_http,"
        "ssh_user,ssh_key_file,ssh_password_file,ssh_host_key,ssh_port,ssh_sudo,kind,tags"),
        *rows]) + "\n")
    return path


def test_csv_agent_and_ssh_rows_become_api_bodies(tmp_path: Path) -> None:
    host_key = key_line()
    path = write_fleet(tmp_path / "inventory", [
        "# the Lyon office",
        "pbx-lyon-1,lyon,192.0.2.11,agent,http://192.0.2.11:8587,tokens/lyon1,yes,,,,,,,,pbx",
        "",
        f"pbx-lyon-2,lyon,192.0.2.12,SSH,,,,root,keys/fleet,,{host_key},2222,no,postfix,"
        "pbx;voip",
        f'pbx-lyon-3,3,192.0.2.13,ssh,,,,admin,,ssh.password,"{host_key} comment",,yes,auto,',
    ])
    plan = importer.parse_file(path)
    assert plan.problems == []
    assert [(r.where, r.name) for r in plan.rows] == [
        ("line 3", "pbx-lyon-1"), ("line 5", "pbx-lyon-2"), ("line 6", "pbx-lyon-3")]
    agent, key_login, password_login = plan.bodies()
    assert agent == {"name": "pbx-lyon-1", "address": "192.0.2.11", "transport": "agent",
                     "agent": {"url": "http://192.0.2.11:8587", "token": AGENT_TOKEN,
                               "insecure_http": True},
                     "mta": {"kind": "sendmail"}, "tags": ["pbx"]}
    assert key_login["ssh"]["private_key"] == (path.parent / "keys" / "fleet").read_text()
    assert key_login["ssh"] | {"private_key": "-"} == {
        "username": "root", "private_key": "-", "host_key": host_key, "port": 2222,
        "sudo": False}
    assert key_login["mta"] == {"kind": "postfix"} and key_login["tags"] == ["pbx", "voip"]
    assert password_login["ssh"] == {"username": "admin", "password": SSH_PASSWORD,
                                     "host_key": f"{host_key} comment", "sudo": True}
    assert password_login["mta"] == {"kind": "auto"} and password_login["tags"] == []
    assert [r.site for r in plan.rows] == ["lyon", "lyon", "3"]


def test_csv_problems_are_named_by_line_host_and_column(tmp_path: Path) -> None:
    path = write_fleet(tmp_path, [
        "pbx-1,lyon,192.0.2.11,agent,,tokens/missing,maybe,root,,,,,,,",
        ",lyon,192.0.2.12,ssh,,,,root,keys/fleet.pub,,not-a-key,99999,,exim,",
        "pbx-3,lyon,,carrier-pigeon,,,,,,,,,,,",
        "pbx-4,lyon,192.0.2.14,ssh,,,,root,keys/fleet,ssh.password,,,,,",
        "pbx-5,lyon,192.0.2.15,agent,http://x:1,tokens/lyon1,,,,,,,,,,extra",
    ])
    problems = [str(p) for p in importer.parse_file(path).sorted_problems()]
    assert problems == [
        "line 2 (pbx-1): agent_url: required for agent rows",
        "line 2 (pbx-1): agent_token_file: cannot read tokens/missing: No such file or "
        "directory",
        "line 2 (pbx-1): agent_insecure_http: must be yes or no, not 'maybe'",
        "line 2 (pbx-1): ssh_user: only for ssh rows (this row's transport is agent)",
        "line 3: name: required",
        "line 3: ssh_key_file: keys/fleet.pub holds a public key; give the private key file "
        "(without .pub)",
        "line 3: ssh_host_key: not an SSH public key line (expected e.g. 'ssh-ed25519 "
        "AAAA...')",
        "line 3: ssh_port: must be a number from 1 to 65535, not '99999'",
        "line 3: kind: must be one of sendmail, postfix, auto, not 'exim'",
        "line 4 (pbx-3): address: required",
        "line 4 (pbx-3): transport: must be agent or ssh, not 'carrier-pigeon'",
        "line 5 (pbx-4): ssh_key_file: give ssh_key_file or ssh_password_file, not both",
        "line 5 (pbx-4): ssh_host_key: required for ssh rows: the host's public key line "
        "('ssh-ed25519 AAAA...'; relayfleet hosts add scans and confirms it for one host)",
        "line 6 (pbx-5): 16 values for 15 columns (a value with a comma needs double quotes)",
    ]


@pytest.mark.parametrize(("text", "expected"), [
    ("name,site,address\n", "line 1: header: missing column transport"),
    ("name,site,address,transport,colour,size\n",
     "line 1: header: unknown columns 'colour', 'size' (known: name, site,"),
    ("name;site;address;transport\n",
     "line 1: header: columns are separated by ';': save the file with commas"),
    ("# nothing but a comment\n\n", "line 1: the file is empty"),
    ("\n# hosts\nname,site,address,transport\n", "line 3: no hosts after the header row"),
    ("name,site,address,transport,name\nx,y,z,agent,x\n", "line 1: header: column name given "
                                                          "twice"),
])
def test_csv_header_problems(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "hosts.csv"
    path.write_text(text)
    problems = [str(p) for p in importer.parse_file(path).problems]
    assert any(p.startswith(expected) for p in problems), problems


def test_json_rows_and_their_problems(tmp_path: Path) -> None:
    path = tmp_path / "hosts.json"
    path.write_text(json.dumps([
        {"name": "a", "site": "lyon", "tenant": "Acme", "address": "192.0.2.1",
         "transport": "agent", "agent": {"url": "http://192.0.2.1:8587", "token": "t" * 20}},
        {"name": "b", "site": "lyon", "site_id": 4},
        "not an object",
        {"name": "d", "address": "192.0.2.4"},
        {"name": "e", "site_id": 7, "tenant": "Acme"},
    ]))
    plan = importer.parse_file(path)
    assert plan.rows[0].body == {"name": "a", "address": "192.0.2.1", "transport": "agent",
                                 "agent": {"url": "http://192.0.2.1:8587", "token": "t" * 20}}
    assert (plan.rows[0].site, plan.rows[0].tenant) == ("lyon", "Acme")
    assert [str(p) for p in plan.sorted_problems()] == [
        "item 2 (b): site: give site (a name) or site_id, not both",
        "item 3: must be an object",
        "item 4 (d): site: required (or site_id)",
        "item 5 (e): tenant: only with site (a name)",
    ]
    path.write_text('[{"name": "a",\n "site": }]')
    assert [str(p) for p in importer.parse_file(path).problems] == [
        "line 2: not valid JSON: Expecting value (column 10)"]


def test_sites_resolve_by_name_id_and_tenant() -> None:
    tenants = [{"id": 1, "name": "Acme"}, {"id": 2, "name": "Globex"}]
    sites = [{"id": 10, "tenant_id": 1, "name": "lyon"}, {"id": 11, "tenant_id": 1,
                                                          "name": "paris"},
             {"id": 20, "tenant_id": 2, "name": "lyon"}]
    plan = importer.Plan(rows=[
        importer.Row("line 2", 2, "a", {}, site="paris"),
        importer.Row("line 3", 3, "b", {}, site="lyon", tenant="Globex"),
        importer.Row("line 4", 4, "c", {}, site="11"),
        importer.Row("line 5", 5, "d", {}, site="lyon"),
        importer.Row("line 6", 6, "e", {}, site="nantes", tenant="acme"),
        importer.Row("line 7", 7, "f", {}, site="lyon", tenant="Initech"),
        importer.Row("line 8", 8, "g", {}, site="99"),
    ])
    importer.resolve_sites(plan, sites, tenants)
    assert [r.body.get("site_id") for r in plan.rows] == [11, 20, 11, None, None, None, None]
    assert [str(p) for p in plan.problems] == [
        "line 5 (d): site: several tenants have a site named 'lyon' (Acme: site 10, Globex: "
        "site 20): add a tenant column or give the site's id",
        "line 6 (e): site: no site named 'nantes' of tenant acme (relayfleet sites list)",
        "line 7 (f): tenant: no tenant 'Initech' in your tenants",
        "line 8 (g): site: no site with id '99' in your tenants (relayfleet sites list)",
    ]


def test_api_errors_map_back_to_lines_and_columns() -> None:
    plan = importer.Plan(rows=[
        importer.Row("line 2", 2, "a", {}), importer.Row("line 5", 5, "b", {},
                                                         columns={"agent.token":
                                                                  "agent_token_file"}),
        importer.Row("item 3", 3, "c", {})])
    problems = importer.api_problems(plan, {
        "hosts.0.ssh.host_key": ["not a key"], "hosts.1.agent.token": ["too short"],
        "hosts.0.tags.1": ["1-64 letters"], "hosts.2.ssh.port": ["too big"],
        "hosts.9.name": ["?"], "hosts": {"_schema": ["odd"]}})
    assert [str(p) for p in problems] == [
        "line 2 (a): ssh_host_key: not a key", "line 5 (b): agent_token_file: too short",
        "line 2 (a): tags: 1-64 letters", "item 3 (c): ssh.port: too big",
        "import: hosts.9.name: ?", "import: hosts._schema: odd"]


def test_host_key_lines_and_fingerprints() -> None:
    line = key_line()
    assert importer.host_key_problem(line) is None
    assert importer.host_key_problem(f"pbx.example {line}") is not None
    assert "known_hosts" in (importer.host_key_problem(f"pbx.example {line}") or "")
    assert importer.host_key_problem("ssh-ed25519 not*base64") == "the key part is not base64"
    key = paramiko.Ed25519Key.from_private_key(io.StringIO(private_key_text()))
    assert importer.key_fingerprint(paramiko_line(key)) == key.fingerprint  # ssh-keygen -l's
    assert importer.key_fingerprint("ssh-ed25519 not*base64") is None
    assert importer.key_fingerprint(None) is None


# -- tenants, sites, tokens, whoami ------------------------------------------------------------

def test_tenants_and_sites_add_and_list(controller: Controller) -> None:
    added = run(controller, None, "tenants", "add", "Acme Dental")
    assert added.code == 0, added
    secret = added.out.strip().splitlines()[-1]
    assert len(secret) >= 20 and "shown only now" in added.err
    assert "added tenant Acme Dental" in added.out
    listed = run(controller, None, "tenants", "list")
    assert listed.code == 0 and "Acme Dental" in listed.out and secret not in listed.out
    site = run(controller, None, "sites", "add", "lyon", "--tenant", "Acme Dental")
    assert site.code == 0 and "added site lyon" in site.out, site
    sites = run(controller, None, "sites", "list", "--tenant", "Acme Dental", "--json").json()
    assert [s["name"] for s in sites["items"]] == ["lyon"]
    assert "Acme Dental" in run(controller, None, "sites", "list").out
    unknown = run(controller, None, "sites", "add", "paris", "--tenant", "Initech")
    assert unknown.code == 2 and "no tenant named 'Initech'" in unknown.err, unknown
    assert "relayfleet tenants list" in unknown.err


def test_tenant_add_json_is_the_api_document(controller: Controller) -> None:
    doc = run(controller, None, "tenants", "add", "Globex", "--json").json()
    assert set(doc) == {"id", "name", "created_at", "callback_secret"}


def test_tokens_create_list_revoke(controller: Controller, acme: dict[str, int]) -> None:
    made = run(controller, None, "tokens", "create", "--role", "operator", "--tenant", "Acme",
               "--name", "acme helpdesk")
    assert made.code == 0, made
    token = made.out.strip().splitlines()[-1]
    assert token.startswith("rft_") and "shown only now" in made.err
    me = run(controller, token, "whoami", "--json").json()
    assert (me["name"], me["role"], me["tenant"]) == ("acme helpdesk", "operator", "Acme")
    listed = run(controller, None, "tokens", "list")
    assert "acme helpdesk" in listed.out and token not in listed.out
    token_id = me["token_id"]
    revoked = run(controller, None, "tokens", "revoke", str(token_id))
    assert revoked.code == 0 and f"revoked token {token_id}" in revoked.out, revoked
    refused = run(controller, token, "whoami")
    assert refused.code == 3, refused
    quiet = run(controller, None, "tokens", "create", "--role", "viewer", "-q")
    assert quiet.out.count("\n") == 1 and quiet.out.startswith("rft_"), quiet


def test_a_viewer_token_cannot_create_tokens(controller: Controller) -> None:
    refused = run(controller, controller.issue("viewer"), "tokens", "create", "--role", "admin")
    assert refused.code == 3, refused
    assert "this needs a token with the admin role; this token is viewer" in refused.err
    assert refused.out == ""


def test_whoami(controller: Controller, acme: dict[str, int]) -> None:
    shown = run(controller, None, "whoami")
    assert shown.code == 0, shown
    assert "test admin" in shown.out and "every tenant (MSP-wide)" in shown.out
    assert "http://controller" in shown.out and "version" in shown.out
    scoped = run(controller, controller.issue("viewer", acme["tenant"]), "whoami", "--json")
    assert scoped.json()["tenant"] == "Acme" and scoped.json()["role"] == "viewer"


# -- login, logout, precedence -------------------------------------------------------------------

def test_login_checks_the_token_and_stores_it_0600(controller: Controller,
                                                   tmp_path: Path) -> None:
    token = controller.issue("operator")
    signed = run(controller, None, "login", "--profile", "acme", "--api",
                 "http://controller/", stdin=token + "\n")
    assert signed.code == 0, signed
    assert signed.out.strip() == "signed in to http://controller as test operator (operator, " \
                                 "every tenant)"
    path = tmp_path / "config" / "relayfleet" / "config.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert config.read_profiles() == {"default_profile": "acme", "profiles": {
        "acme": {"api": "http://controller", "token": token}}}
    # the profile is what a command without flags or environment uses
    assert Cli().connection() == Connection("http://controller", token, "profile acme")
    forgot = run(controller, None, "logout", "--profile", "acme")
    assert forgot.code == 0 and "forgot profile acme" in forgot.out, forgot
    assert config.read_profiles().get("profiles", {}) == {}
    again = run(controller, None, "logout", "--profile", "acme")
    assert again.code == 2 and "no profile named 'acme'" in again.err


def test_login_refuses_a_wrong_token_and_stores_nothing(controller: Controller,
                                                        tmp_path: Path) -> None:
    refused = run(controller, None, "login", "--api", "http://controller",
                  stdin="rft_wrong_token\n")
    assert refused.code == 3, refused
    assert not (tmp_path / "config" / "relayfleet" / "config.toml").exists()
    no_url = run(controller, None, "login", stdin=controller.admin)
    assert no_url.code == 2 and "--api" in no_url.err, no_url


def test_login_takes_the_url_from_the_environment_then_the_profile(
        controller: Controller, monkeypatch: pytest.MonkeyPatch) -> None:
    config.save_profile("lab", "http://controller", "rft_old")
    signed = run(controller, None, "login", "--profile", "lab", stdin=controller.admin)
    assert signed.code == 0 and "signed in to http://controller" in signed.out, signed
    assert config.read_profiles()["profiles"]["lab"]["token"] == controller.admin
    # the environment's URL beats the profile's (the in-process controller answers any
    # host name: what counts is the URL login checked and stored)
    monkeypatch.setenv(config.ENV_API, "http://controller.example")
    again = run(controller, None, "login", "--profile", "lab", stdin=controller.admin)
    assert again.code == 0 and "signed in to http://controller.example" in again.out, again
    assert config.read_profiles()["profiles"]["lab"]["api"] == "http://controller.example"
    # and a --api given to login beats the environment
    flagged = run(controller, None, "login", "--profile", "lab", "--api",
                  "http://controller.flag", stdin=controller.admin)
    assert flagged.code == 0 and "signed in to http://controller.flag" in flagged.out


def test_precedence_flags_then_environment_then_profile(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config.save_profile("acme", "https://profile.example", "rft_profile")
    assert Cli().connection() == Connection("https://profile.example", "rft_profile",
                                            "profile acme")
    monkeypatch.setenv(config.ENV_API, "https://env.example")
    monkeypatch.setenv(config.ENV_TOKEN, "rft_env")
    assert Cli().connection() == Connection("https://env.example", "rft_env", "environment")
    token_file = tmp_path / "token"
    token_file.write_text("rft_flag\n")
    assert Cli(api_url="https://flag.example", token_file=str(token_file)).connection() == \
        Connection("https://flag.example", "rft_flag", "flag")
    # a profile named on the command line is a flag too: it beats the environment
    assert Cli(profile="acme").connection() == Connection(
        "https://profile.example", "rft_profile", "profile acme")


# -- hosts add / list / show / remove -------------------------------------------------------

def test_hosts_add_list_show_remove(controller: Controller, acme: dict[str, int],
                                    tmp_path: Path) -> None:
    token_file = tmp_path / "agent.token"
    token_file.write_text(AGENT_TOKEN + "\n")
    key_file = tmp_path / "fleet"
    key_file.write_text(private_key_text())
    host_key = key_line()
    agent = run(controller, None, "hosts", "add", "pbx-lyon-1", "--site", "lyon", "--tenant",
                "Acme", "--address", "192.0.2.11", "--agent-url", "http://192.0.2.11:8587",
                "--agent-token-file", str(token_file), "--agent-insecure-http",
                "--tag", "pbx", "--tag", "voip")
    assert agent.code == 0 and "added host pbx-lyon-1" in agent.out, agent
    ssh = run(controller, None, "hosts", "add", "pbx-paris-1", "--site", "paris", "--address",
              "192.0.2.21", "--ssh-user", "root", "--ssh-key-file", str(key_file),
              "--host-key", host_key, "--kind", "postfix", "--sudo", "--json")
    assert ssh.code == 0, ssh
    doc = ssh.json()
    assert doc["ssh"] == {"port": 22, "username": "root", "host_key": host_key, "sudo": True,
                          "auth": "key"}
    assert doc["site_id"] == acme["paris"] and doc["mta"]["kind"] == "postfix"
    # a site name two tenants use needs --tenant
    ambiguous = run(controller, None, "hosts", "add", "x", "--site", "lyon", "--address",
                    "192.0.2.9", "--ssh-user", "root", "--ssh-key-file", str(key_file),
                    "--host-key", host_key)
    assert ambiguous.code == 2 and "several tenants have a site named 'lyon'" in ambiguous.err

    listed = run(controller, None, "hosts", "list")
    assert listed.code == 0, listed
    lines = listed.out.splitlines()
    assert any("pbx-lyon-1" in line and "Acme" in line and "lyon" in line
               and "192.0.2.11" in line and "agent" in line and "never" in line
               for line in lines), listed.out
    assert any("pbx-paris-1" in line and "ssh" in line and "postfix" in line
               for line in lines), listed.out
    only_ssh = run(controller, None, "hosts", "list", "--transport", "ssh", "--json").json()
    assert [h["name"] for h in only_ssh["items"]] == ["pbx-paris-1"]
    tagged = run(controller, None, "hosts", "list", "--tenant", "Acme", "--tag", "voip")
    assert "pbx-lyon-1" in tagged.out and "pbx-paris-1" not in tagged.out
    by_name = run(controller, None, "hosts", "list", "--name", "paris", "--json").json()
    assert [h["name"] for h in by_name["items"]] == ["pbx-paris-1"]

    shown = run(controller, None, "hosts", "show", "pbx-paris-1")
    assert shown.code == 0, shown
    assert "root@192.0.2.21:22" in shown.out and fingerprint(host_key) in shown.out
    assert "Acme" in shown.out and "paris" in shown.out
    assert run(controller, None, "hosts", "show", str(doc["id"]), "--json").json() == \
        controller.ok("GET", f"/v1/hosts/{doc['id']}")
    missing = run(controller, None, "hosts", "show", "pbx-nantes-1")
    assert missing.code == 2, missing
    assert "no host named pbx-nantes-1 in your tenants" in missing.err
    assert "try: relayfleet hosts list --name nantes" in missing.err

    refused = run(controller, None, "hosts", "remove", "pbx-lyon-1")
    assert refused.code == 2 and "--yes" in refused.err, refused
    assert "pbx-lyon-1" in host_names(controller)
    removed = run(controller, None, "hosts", "remove", "pbx-lyon-1", "--yes")
    assert removed.code == 0 and "removed host pbx-lyon-1" in removed.out, removed
    assert host_names(controller) == ["pbx-paris-1"]


def test_hosts_add_needs_one_way_in(controller: Controller, acme: dict[str, int],
                                    tmp_path: Path) -> None:
    neither = run(controller, None, "hosts", "add", "x", "--site", "paris", "--address",
                  "192.0.2.9")
    assert neither.code == 2 and "--agent-url" in neither.err
    both = run(controller, None, "hosts", "add", "x", "--site", "paris", "--address",
               "192.0.2.9", "--agent-url", "https://192.0.2.9:8587", "--ssh-user", "root")
    assert both.code == 2 and "not both" in both.err
    public = tmp_path / "key.pub"
    public.write_text(key_line())
    wrong_file = run(controller, None, "hosts", "add", "x", "--site", "paris", "--address",
                     "192.0.2.9", "--ssh-user", "root", "--ssh-key-file", str(public),
                     "--host-key", key_line())
    assert wrong_file.code == 2 and "holds a public key" in wrong_file.err
    bad_address = run(controller, None, "hosts", "add", "x", "--site", "paris", "--address",
                      "not an address", "--ssh-user", "root", "--ssh-password-file",
                      str(public), "--host-key", str(public))
    assert bad_address.code == 3 and "address" in bad_address.err, bad_address
    assert host_names(controller) == []


# -- SSH host keys: scan, confirm, pin ----------------------------------------------------------

@pytest.fixture
def loopback(memory_controller: Controller) -> Controller:
    """The same database, with an egress policy that lets the controller dial loopback."""
    return Controller.create(egress_allow="loopback")


def test_hosts_add_scans_the_host_key_and_needs_a_yes(loopback: Controller,
                                                      tmp_path: Path) -> None:
    site = loopback.site(loopback.tenant("Acme"), "lyon")
    password = tmp_path / "password"
    password.write_text(SSH_PASSWORD + "\n")
    server_key = paramiko.Ed25519Key.from_private_key(io.StringIO(private_key_text()))
    offered = paramiko_line(server_key)
    with ssh_server(server_key) as port:
        args = ["hosts", "add", "pbx-lyon-1", "--site", str(site), "--address", "127.0.0.1",
                "--ssh-port", str(port), "--ssh-user", "root", "--ssh-password-file",
                str(password)]
        refused = run(loopback, None, *args)
        assert refused.code == 2, refused
        assert fingerprint(offered) in refused.err
        assert "--host-key" in refused.err and "--yes" in refused.err
        assert host_names(loopback) == []
        added = run(loopback, None, *args, "--yes", "--json")
    assert added.code == 0, added
    assert added.json()["ssh"]["host_key"] == offered
    assert added.json()["ssh"]["port"] == port


def test_enroll_ssh_shows_a_changed_key_loudly_and_pins_it(loopback: Controller) -> None:
    site = loopback.site(loopback.tenant("Acme"), "lyon")
    old = key_line()
    server_key = paramiko.Ed25519Key.from_private_key(io.StringIO(private_key_text()))
    new = paramiko_line(server_key)
    with ssh_server(server_key) as port:
        host = loopback.ok("POST", "/v1/hosts", {
            "name": "pbx-lyon-1", "site_id": site, "address": "127.0.0.1", "transport": "ssh",
            "ssh": {"username": "root", "password": SSH_PASSWORD, "host_key": old,
                    "port": port}})
        refused = run(loopback, None, "hosts", "enroll-ssh", "pbx-lyon-1")
        assert refused.code == 2, refused
        assert "HOST KEY HAS CHANGED" in refused.err and "attack" in refused.err
        assert fingerprint(old) in refused.err
        assert fingerprint(new) in refused.err
        assert "--yes" in refused.err
        assert loopback.ok("GET", f"/v1/hosts/{host['id']}")["ssh"]["host_key"] == old
        pinned = run(loopback, None, "hosts", "enroll-ssh", "pbx-lyon-1", "--yes")
        assert pinned.code == 0, pinned
        assert f"pinned {importer.key_fingerprint(new)} on pbx-lyon-1" in pinned.out
        assert loopback.ok("GET", f"/v1/hosts/{host['id']}")["ssh"]["host_key"] == new
        same = run(loopback, None, "hosts", "enroll-ssh", str(host["id"]))
    assert same.code == 0 and "already pinned" in same.out, same
    assert "CHANGED" not in same.err


def test_enroll_ssh_of_an_agent_host_is_a_usage_problem(controller: Controller,
                                                        acme: dict[str, int]) -> None:
    controller.host(acme["paris"], "pbx-paris-1")
    refused = run(controller, None, "hosts", "enroll-ssh", "pbx-paris-1", "--yes")
    assert refused.code == 2 and "agent" in refused.err


# -- hosts import -----------------------------------------------------------------------------

def good_rows(host_key: str) -> list[str]:
    return [
        "pbx-lyon-1,lyon,192.0.2.11,agent,http://192.0.2.11:8587,tokens/lyon1,yes,,,,,,,,pbx",
        f"pbx-paris-1,paris,192.0.2.21,ssh,,,,root,keys/fleet,,{host_key},2222,yes,postfix,"
        "pbx voip",
        f"pbx-paris-2,paris,192.0.2.22,ssh,,,,admin,,ssh.password,{host_key},,,,",
    ]


def import_csv(directory: Path, rows: list[str]) -> Path:
    return write_fleet(directory, rows, header=(
        "name,site,address,transport,agent_url,agent_token_file,agent_insecure_http,"
        "ssh_user,ssh_key_file,ssh_password_file,ssh_host_key,ssh_port,ssh_sudo,kind,tags,"
        "tenant"))


def test_import_a_mixed_csv(controller: Controller, acme: dict[str, int],
                            tmp_path: Path) -> None:
    host_key = key_line()
    path = import_csv(tmp_path / "elsewhere", [row + ",Acme" for row in good_rows(host_key)])
    dry = run(controller, None, "hosts", "import", str(path), "--dry-run")
    assert dry.code == 0, dry
    assert "pbx-paris-2" in dry.out and "3 hosts look right" in dry.out
    assert host_names(controller) == []
    created = run(controller, None, "hosts", "import", str(path))
    assert created.code == 0, created
    assert "created 3 hosts" in created.out
    assert any("pbx-paris-1" in line and "paris" in line and "ssh" in line
               for line in created.out.splitlines())
    assert host_names(controller) == ["pbx-lyon-1", "pbx-paris-1", "pbx-paris-2"]
    hosts = {h["name"]: h for h in controller.ok("GET", "/v1/hosts")["items"]}
    assert hosts["pbx-lyon-1"]["agent"] == {"url": "http://192.0.2.11:8587", "ca_cert": None,
                                            "has_token": True, "insecure_http": True}
    assert hosts["pbx-lyon-1"]["site_id"] == acme["lyon"]
    assert hosts["pbx-paris-1"]["ssh"] == {"port": 2222, "username": "root", "sudo": True,
                                           "host_key": host_key, "auth": "key"}
    assert hosts["pbx-paris-1"]["tags"] == ["pbx", "voip"]
    assert hosts["pbx-paris-2"]["ssh"]["auth"] == "password"


def test_import_bad_rows_are_named_and_nothing_is_created(
        controller: Controller, acme: dict[str, int], tmp_path: Path) -> None:
    host_key = key_line()
    rows = good_rows(host_key)
    rows[0] += ","  # lyon: two tenants have one, and no tenant is given
    rows[1] = rows[1].replace("keys/fleet", "keys/absent") + ",Acme"
    rows[2] += ",Acme"
    rows.append("pbx-nantes-1,nantes,192.0.2.31,agent,https://192.0.2.31:8587,,,,,,,,,,,Acme")
    path = import_csv(tmp_path, rows)
    refused = run(controller, None, "hosts", "import", str(path))
    assert refused.code == 2, refused
    assert "fleet.csv has 4 problems; nothing was created:\n" \
           "  line 2 (pbx-lyon-1): site: several tenants have a site named 'lyon' (Acme: " \
           f"site {acme['lyon']}, Globex: site {acme['globex_lyon']}): add a tenant column " \
           "or give the site's id\n" \
           "  line 3 (pbx-paris-1): ssh_key_file: cannot read keys/absent: No such file or " \
           "directory\n" \
           "  line 5 (pbx-nantes-1): agent_token_file: required for agent rows (or an " \
           "agent_token column)\n" \
           "  line 5 (pbx-nantes-1): site: no site named 'nantes' of tenant Acme (relayfleet " \
           "sites list)\n" in refused.err
    assert controller.ok("GET", "/v1/hosts")["items"] == []
    dry = run(controller, None, "hosts", "import", str(path), "--dry-run")
    assert dry.code == 2 and "line 3 (pbx-paris-1)" in dry.err


def test_import_unknown_site_is_named_before_anything_is_sent(
        controller: Controller, acme: dict[str, int], tmp_path: Path) -> None:
    rows = [good_rows(key_line())[2] + ",Acme",
            "pbx-nantes-1,nantes,192.0.2.31,agent,https://192.0.2.31:8587,tokens/lyon1,,,,,,,,,"
            ",Acme"]
    refused = run(controller, None, "hosts", "import", str(import_csv(tmp_path, rows)))
    assert refused.code == 2, refused
    assert "line 3 (pbx-nantes-1): site: no site named 'nantes' of tenant Acme" in refused.err
    assert controller.ok("GET", "/v1/hosts")["items"] == []


def test_import_api_refusals_are_mapped_to_lines(controller: Controller, acme: dict[str, int],
                                                 tmp_path: Path) -> None:
    host_key = key_line()
    controller.host(acme["paris"], "pbx-paris-2")
    rows = [row + ",Acme" for row in good_rows(host_key)]
    rows[0] = rows[0].replace("192.0.2.11,", "bad address!,").replace(",pbx,", ",bad tag!,")
    path = import_csv(tmp_path, rows)
    refused = run(controller, None, "hosts", "import", str(path))
    assert refused.code == 3, refused
    assert "the controller refused fleet.csv; nothing was created" in refused.err
    assert "line 2 (pbx-lyon-1): address: contains a character not allowed" in refused.err
    assert "line 2 (pbx-lyon-1): tags: 1-64 letters" in refused.err
    assert host_names(controller) == ["pbx-paris-2"]
    # the only problem left is a name the site already has: the API's 409, named by line
    rows[0] = rows[0].replace("bad address!,", "192.0.2.11,").replace(",bad tag!,", ",pbx,")
    path = import_csv(tmp_path, rows)
    duplicate = run(controller, None, "hosts", "import", str(path))
    assert duplicate.code == 3, duplicate
    assert "line 4 (pbx-paris-2): name: site paris already has a host named pbx-paris-2" in \
        duplicate.err
    assert host_names(controller) == ["pbx-paris-2"]
    dry = run(controller, None, "hosts", "import", str(path), "--dry-run")
    assert dry.code == 2 and "line 4 (pbx-paris-2): name: site paris already has" in dry.err
    # the same name twice in the file
    rows[2] = rows[2].replace("pbx-paris-2", "pbx-paris-1")
    twice = run(controller, None, "hosts", "import", str(import_csv(tmp_path, rows)))
    assert twice.code == 2, twice
    assert "line 4 (pbx-paris-1): name: the same site already gets a host named " \
           "'pbx-paris-1' from line 3" in twice.err


def test_import_json(controller: Controller, acme: dict[str, int], tmp_path: Path) -> None:
    path = tmp_path / "hosts.json"
    path.write_text(json.dumps([
        {"name": "pbx-lyon-1", "site": "lyon", "tenant": "Globex", "address": "192.0.2.11",
         "transport": "agent", "agent": {"url": "https://192.0.2.11:8587",
                                         "token": AGENT_TOKEN}},
        {"name": "pbx-paris-1", "site_id": acme["paris"], "address": "192.0.2.21",
         "transport": "ssh", "ssh": {"username": "root", "password": SSH_PASSWORD,
                                     "host_key": key_line()}, "tags": ["pbx"]},
    ]))
    dry = run(controller, None, "hosts", "import", str(path), "--dry-run", "--json")
    assert dry.code == 0, dry
    assert dry.json()["hosts"][0]["agent"]["token"] == "<secret>"
    assert AGENT_TOKEN not in dry.out and SSH_PASSWORD not in dry.out
    created = run(controller, None, "hosts", "import", str(path), "--json")
    assert created.code == 0, created
    answer = created.json()
    assert answer["created"] == 2
    assert [h["site_id"] for h in answer["items"]] == [acme["globex_lyon"], acme["paris"]]
    path.write_text(json.dumps([{"name": "x", "site": "lyon", "address": "192.0.2.5",
                                 "transport": "agent", "agent": {"url": "https://192.0.2.5"}},
                                {"name": "y", "site": "paris", "address": "192.0.2.6",
                                 "transport": "carrier", "agent": {"url": "https://x"}}]))
    refused = run(controller, None, "hosts", "import", str(path))
    assert refused.code == 2 and "item 1 (x): site: several tenants" in refused.err, refused
    path.write_text(json.dumps([{"name": "y", "site": "paris", "address": "192.0.2.6",
                                 "transport": "carrier", "agent": {"url": "https://x"}}]))
    refused = run(controller, None, "hosts", "import", str(path))
    assert refused.code == 3 and "item 1 (y): transport: Must be one of" in refused.err, refused
    assert len(host_names(controller)) == 2


# -- fleet, audit, --json, --help, completion -------------------------------------------------

def test_fleet_and_audit(controller: Controller, acme: dict[str, int]) -> None:
    controller.host(acme["paris"], "pbx-paris-1")
    controller.host(acme["lyon"], "pbx-lyon-1")
    shown = run(controller, None, "fleet")
    assert shown.code == 0, shown
    assert shown.out.splitlines()[0].startswith("2 hosts · 0 holding mail (0 queued messages)")
    assert "2 never seen" in shown.out and "pbx-paris-1" in shown.out
    doc = run(controller, None, "fleet", "--site", "paris", "--tenant", "Acme", "--json").json()
    assert [h["name"] for h in doc["items"]] == ["pbx-paris-1"]
    assert doc["summary"]["hosts"] == 2
    holding = run(controller, None, "fleet", "--holding-mail")
    assert holding.code == 0 and "no hosts hold mail" in holding.out
    audited = run(controller, None, "audit", "--action", "POST /v1/hosts")
    assert audited.code == 0, audited
    assert audited.out.count("POST /v1/hosts") == 2 and "201" in audited.out
    assert len(run(controller, None, "audit", "--limit", "1", "--json").json()["items"]) == 1


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in sorted(group.commands.items()):
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from all_commands(command, (*prefix, name))


def test_every_command_has_examples_in_its_help(controller: Controller) -> None:
    commands = list(all_commands(cli))
    assert {("login",), ("hosts", "import"), ("hosts", "enroll-ssh"), ("tokens", "revoke"),
            ("completion", "bash"), ("fleet",), ("audit",)} <= set(commands)
    for path in [(), *commands]:
        shown = run(controller, None, *path, "--help")
        assert shown.code == 0, (path, shown)
        examples = shown.out.split("Examples:", 1)
        assert len(examples) == 2 and "relayfleet" in examples[1], path


def test_commands_take_json_and_quiet_after_the_command(controller: Controller) -> None:
    for args in (["whoami"], ["fleet"], ["audit"], ["tenants", "list"], ["hosts", "list"]):
        shown = run(controller, None, *args, "--json")
        assert shown.code == 0, (args, shown)
        assert isinstance(shown.json(), dict)
    quiet = run(controller, None, "tenants", "add", "Initech", "-q")
    assert quiet.out.count("\n") == 1, quiet


def test_completion_bash_prints_and_installs(controller: Controller, tmp_path: Path) -> None:
    printed = run(controller, None, "completion", "bash")
    assert printed.code == 0, printed
    assert "_RELAYFLEET_COMPLETE=bash_complete" in printed.out
    assert "complete -o nosort -F" in printed.out and "relayfleet" in printed.out
    installed = run(controller, None, "completion", "bash", "--install")
    assert installed.code == 0, installed
    path = tmp_path / "data-home" / "bash-completion" / "completions" / "relayfleet"
    assert path.read_text() == printed.out and str(path) in installed.out


def test_csv_import_reads_what_excel_writes(tmp_path: Path) -> None:
    """A UTF-8 BOM and CRLF line ends (Excel's "CSV UTF-8"), quoted values with commas."""
    host_key = key_line()
    buffer = io.StringIO()
    writer = csv.writer(buffer)  # \r\n line ends by default
    writer.writerow(["Name", "Site", "Address", "Transport", "ssh_user", "ssh_password_file",
                     "ssh_host_key", "tags"])
    writer.writerow(["pbx-1", "lyon", "192.0.2.1", "ssh", "root", "pw", host_key, "a, b"])
    (tmp_path / "pw").write_text(SSH_PASSWORD)
    path = tmp_path / "fleet.csv"
    path.write_bytes(b"\xef\xbb\xbf" + buffer.getvalue().encode())
    plan = importer.parse_file(path)
    assert plan.problems == []
    assert plan.rows[0].body["ssh"]["password"] == SSH_PASSWORD
    assert plan.rows[0].body["tags"] == ["a", "b"]


# -- numbers that are names, in a CSV ----------------------------------------------------------

def test_a_csv_site_that_is_a_number_and_a_name_is_refused() -> None:
    tenants = [{"id": 1, "name": "Acme"}]
    sites = [{"id": 1, "tenant_id": 1, "name": "lyon"}, {"id": 2, "tenant_id": 1, "name": "1"}]
    plan = importer.Plan(rows=[
        importer.Row("line 2", 2, "a", {}, site="1"),
        importer.Row("line 3", 3, "b", {}, site="id:1"),
        importer.Row("line 4", 4, "c", {}, site="name:1"),
        importer.Row("line 5", 5, "d", {}, site="2"),
        importer.Row("line 6", 6, "e", {}, site="²"),
    ])
    importer.resolve_sites(plan, sites, tenants)
    assert [r.body.get("site_id") for r in plan.rows] == [None, 1, 2, 2, None]
    assert [str(p) for p in plan.problems] == [
        "line 2 (a): site: '1' could be site id 1 or the site named '1'; say which: id:1 or "
        "name:1",
        "line 6 (e): site: no site named '²' in your tenants (relayfleet sites list)"]


# -- a profile's token goes only to its own controller -----------------------------------------

def test_a_profile_token_is_never_sent_to_another_controller(
        monkeypatch: pytest.MonkeyPatch) -> None:
    config.save_profile("staging", "https://staging.example", "rft_staging")
    config.save_profile("prod", "https://prod.example", "rft_prod")  # the default now
    with pytest.raises(CliError) as flagged:
        Cli(api_url="https://staging.example").connection()
    assert flagged.value.exit_code == 2
    assert flagged.value.message.startswith("no API token for https://staging.example")
    assert flagged.value.hint == "use its profile: relayfleet --profile staging ..."
    assert "rft_prod" not in flagged.value.message + str(flagged.value.hint)
    monkeypatch.setenv(config.ENV_API, "http://evil.example")
    with pytest.raises(CliError) as evil:
        Cli().connection()
    assert evil.value.message.startswith("no API token for http://evil.example")
    assert "relayfleet login --profile NAME --api http://evil.example" in str(evil.value.hint)
    # the profile's own URL (written another way) still gets its token
    assert Cli(api_url="HTTPS://prod.example/").connection().token == "rft_prod"
    assert Cli(profile="staging").connection() == Connection(
        "https://staging.example", "rft_staging", "profile staging")


# -- API text is printed as it is -----------------------------------------------------------------

def test_api_text_is_never_read_as_markup(controller: Controller, acme: dict[str, int]) -> None:
    from controller.db import db
    from controller.models import Host

    host = controller.host(acme["paris"], "pbx-paris-1")
    with controller.app.app_context():
        row = db.session.get_one(Host, host["id"])
        row.last_seen_at = datetime.now(UTC)
        row.smarthost = {"host": "[relay.lab.test]", "port": 2525, "mx": False}
        row.last_error = "bad [bold]markup[/bold] :smile:"
        row.last_reachable = False
        db.session.commit()
    shown = run(controller, None, "hosts", "show", "pbx-paris-1")
    assert shown.code == 0, shown
    assert "[relay.lab.test]:2525" in shown.out
    assert "bad [bold]markup[/bold] :smile:" in shown.out
    me = {"token_id": 3, "name": "ci [/deploy]", "role": "viewer", "tenant_id": None,
          "tenant": None, "version": "1"}
    client = ApiClient(Connection(api="http://controller", token="t", source="test"),
                       transport=httpx.MockTransport(lambda _: httpx.Response(200, json=me)))
    result = CliRunner().invoke(cli, ["whoami"], obj=Cli(_api=client), standalone_mode=False,
                                catch_exceptions=False, env={"NO_COLOR": "1"})
    assert "ci [/deploy] (id 3)" in result.stdout


# -- the profiles file --------------------------------------------------------------------------

def test_the_profiles_file_is_0600_whatever_was_there(tmp_path: Path) -> None:
    directory = tmp_path / "config" / "relayfleet"
    directory.mkdir(parents=True, mode=0o755)
    directory.chmod(0o755)
    stale = directory / "config.toml.tmp"
    stale.write_text("")
    stale.chmod(0o644)
    path = config.save_profile("acme", "https://relayfleet.example.net", "rft_secret")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert config.read_profiles()["profiles"]["acme"]["token"] == "rft_secret"
    assert sorted(p.name for p in directory.iterdir()) == ["config.toml", "config.toml.tmp"]


# -- CSV comments, the files a CSV names, huge files ---------------------------------------------

def test_a_hash_line_inside_a_quoted_value_is_not_a_comment(tmp_path: Path) -> None:
    path = write_fleet(tmp_path, [
        "# a comment",
        'pbx-1,lyon,192.0.2.1,agent,http://192.0.2.1:8587,tokens/lyon1,yes,,,,,,,,"pbx',
        '#voip"',
        "pbx-2,lyon,192.0.2.2,agent,http://192.0.2.2:8587,tokens/lyon1,yes,,,,,,,,pbx",
        "  # another comment",
        "pbx-3,lyon,192.0.2.3,agent,http://192.0.2.3:8587,tokens/lyon1,yes,,,,,,,,pbx",
    ])
    plan = importer.parse_file(path)
    assert plan.problems == []
    assert [(r.where, r.name) for r in plan.rows] == [
        ("line 3", "pbx-1"), ("line 5", "pbx-2"), ("line 7", "pbx-3")]
    assert plan.rows[0].body["tags"] == ["pbx", "#voip"]


def agent_row(name: str, token_file: str) -> str:
    return f"{name},lyon,192.0.2.1,agent,http://192.0.2.1:8587,{token_file},yes,,,,,,,,"


@pytest.mark.timeout(60)
def test_files_a_csv_names_stay_in_its_directory(tmp_path: Path) -> None:
    import os

    outside = tmp_path / "secret"
    outside.write_text("not for the CSV\n")
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    (fleet / "link").symlink_to(outside)
    os.mkfifo(fleet / "pipe")
    (fleet / "big").write_text("x" * (64 * 1024 + 1))
    path = write_fleet(fleet, [agent_row("a", "../secret"), agent_row("b", "/proc/self/environ"),
                               agent_row("c", "link"), agent_row("d", "pipe"),
                               agent_row("e", "big"), agent_row("f", "tokens/lyon1")])
    problems = {p.name: p.message for p in importer.parse_file(path).problems}
    outside_words = "is outside the CSV's directory"
    assert outside_words in problems["a"] and "--allow-outside-files" in problems["a"]
    assert outside_words in problems["b"] and outside_words in problems["c"]
    assert problems["d"] == "pipe is not a regular file"
    assert problems["e"] == "big is larger than 64 KiB: not a key, token or password file"
    assert "f" not in problems
    allowed = importer.parse_file(path, allow_outside=True)
    problems = {p.name: p.message for p in allowed.problems}
    assert "a" not in problems and "c" not in problems and "b" not in problems
    assert allowed.rows[0].body["agent"]["token"] == "not for the CSV"
    assert problems["d"] == "pipe is not a regular file"
    assert problems["e"].startswith("big is larger than 64 KiB")


def test_import_allow_outside_files_is_an_option(controller: Controller, acme: dict[str, int],
                                                 tmp_path: Path) -> None:
    (tmp_path / "agent.token").write_text(AGENT_TOKEN + "\n")
    (tmp_path / "fleet").mkdir()
    path = import_csv(tmp_path / "fleet", [agent_row("pbx-lyon-9", "../agent.token") + ",Acme"])
    refused = run(controller, None, "hosts", "import", str(path), "--dry-run")
    assert refused.code == 2 and "is outside the CSV's directory" in refused.err, refused
    allowed = run(controller, None, "hosts", "import", str(path), "--dry-run",
                  "--allow-outside-files")
    assert allowed.code == 0, allowed


def test_a_huge_csv_stops_at_its_1001st_host(tmp_path: Path) -> None:
    path = write_fleet(tmp_path, [agent_row(f"pbx-{n}", "tokens/lyon1") for n in range(1500)])
    with path.open("ab") as handle:
        handle.write(b"\xff\xfe not UTF-8 past the limit\n")  # never read
    plan = importer.parse_file(path)
    assert len(plan.rows) == 1000
    assert [str(p) for p in plan.problems] == [
        "line 1002: more than 1000 hosts; one import takes at most 1000: split the file"]


def test_many_problems_are_shown_in_a_screenful(controller: Controller, acme: dict[str, int],
                                                tmp_path: Path) -> None:
    rows = [f"pbx-{n},paris,,agent,http://192.0.2.1:8587,tokens/lyon1,yes,,,,,,,,,Acme"
            for n in range(60)]
    refused = run(controller, None, "hosts", "import", str(import_csv(tmp_path, rows)))
    assert refused.code == 2, refused
    assert "fleet.csv has 60 problems; nothing was created" in refused.err
    assert refused.err.count(": address: required") == 50
    assert "  ... and 10 more (fix these first)" in refused.err


# -- logout's note, a declined confirmation -------------------------------------------------------

def test_logout_says_the_token_still_works(controller: Controller) -> None:
    config.save_profile("acme", "http://controller", "rft_x")
    forgot = run(controller, None, "logout", "--profile", "acme")
    assert forgot.code == 0, forgot
    assert "the token still works on the controller until revoked" in forgot.err


def test_declining_a_confirmation_exits_4_and_does_nothing(
        controller: Controller, acme: dict[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    from controller.client import inventory_commands

    controller.host(acme["paris"], "pbx-paris-1")
    monkeypatch.setattr(inventory_commands, "_can_ask", lambda: True)
    declined = run(controller, None, "hosts", "remove", "pbx-paris-1", stdin="n\n")
    assert declined.code == 4, declined
    assert "nothing removed" in declined.err
    assert host_names(controller) == ["pbx-paris-1"]
    agreed = run(controller, None, "hosts", "remove", "pbx-paris-1", stdin="y\n")
    assert agreed.code == 0 and host_names(controller) == [], agreed
