"""The production compose file's structure (no Docker engine needed): healthchecks, real
commands, documented settings, no literal secret, a scalable worker, Redis with AOF and a
password (its start and healthcheck scripts run against this machine's redis-server), and
networks that keep the front and the managed hosts away from Redis and PostgreSQL."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.cli import build_parser
from controller.healthcheck import PROBES
from tests.lab.services import _wait_tcp, free_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DEMO = ROOT / "deploy" / "compose" / "demo.yml"
ENV_EXAMPLE = ROOT / "deploy" / "compose" / "relayfleet.env.example"
CONTROLLER_IMAGE = "relayfleet-controller"
#: commands of the other images, as those images ship them
IMAGE_COMMANDS = {"redis": {"redis-server", "sh"}, "postgres": {"postgres"}, "caddy": {"caddy"}}
#: RELAYFLEET_ names in the code that are not environment variables of the server
NOT_SERVER_SETTINGS = {"RELAYFLEET_SETTINGS"}  # a Flask config key
_SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$|_KEY_", re.IGNORECASE)
_REFERENCE = re.compile(r"^\$\{[A-Z0-9_]+(:?[-?][^}]*)?\}$")


def load(path: Path) -> dict[str, Any]:
    """The compose document."""
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml."""
    return load(COMPOSE)


def image_of(service: dict[str, Any]) -> str:
    """The image's name without registry path or tag (``redis:7-alpine`` -> ``redis``)."""
    return str(service.get("image", "")).split(":")[0].rsplit("/", 1)[-1]


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-commands of ``relayfleet-controller`` as its argparse grammar defines them."""
    for action in parser._actions:  # argparse keeps sub-parsers only here
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("relayfleet-controller has no sub-commands")


def test_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in {**compose["services"], **load(DEMO)["services"]}.items():
        if name == "worker" and "image" not in service:
            continue  # the demo file only narrows the production worker's egress
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no healthcheck"
        test = check["test"]
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, (
            name, test)


def test_commands_are_real(compose: dict[str, Any]) -> None:
    parser = build_parser()
    known = subcommands(parser)
    for name, service in compose["services"].items():
        command = service.get("command")
        image = image_of(service)
        check = service["healthcheck"]["test"][1:]
        if image == CONTROLLER_IMAGE:
            assert command and command[0] in known, f"{name}: {command} is no sub-command"
            # The whole command line must parse (options included), as the entry point would.
            parser.parse_args(command)
            assert check[:3] == ["python", "-m", "controller.healthcheck"], (name, check)
            assert check[3] in PROBES, (name, check)
        else:
            assert image in IMAGE_COMMANDS, f"{name}: unknown image {service.get('image')}"
            assert command is None or command[0] in IMAGE_COMMANDS[image], (name, command)
    roles = {service["command"][0] for service in compose["services"].values()
             if image_of(service) == CONTROLLER_IMAGE}
    assert roles == {"init-db", "serve", "worker", "beat"}


def test_migrate_runs_first_and_the_rest_waits(compose: dict[str, Any]) -> None:
    services = compose["services"]
    (migrate,) = [name for name, service in services.items()
                  if service.get("command", [None])[0] == "init-db"]
    assert services[migrate]["restart"] == "no"
    for name, service in services.items():
        if image_of(service) == CONTROLLER_IMAGE and name != migrate:
            assert service["depends_on"][migrate] == {
                "condition": "service_completed_successfully"}, name
            assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
            assert service["depends_on"]["redis"]["condition"] == "service_healthy"


def test_the_tls_front_is_the_only_published_port(compose: dict[str, Any]) -> None:
    published = {name: service["ports"] for name, service in compose["services"].items()
                 if service.get("ports")}
    assert list(published) == ["front"], published
    (port,) = published["front"]
    assert str(port).endswith(":443")
    front = compose["services"]["front"]
    assert image_of(front) == "caddy"
    assert "./deploy/compose/Caddyfile:/etc/caddy/Caddyfile:ro" in front["volumes"]
    assert (ROOT / "deploy" / "compose" / "Caddyfile").is_file()


def test_the_worker_scales(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    for key in ("container_name", "ports", "hostname"):
        assert key not in worker, f"worker has {key}: --scale worker=3 would clash"
    assert compose["services"]["beat"]["deploy"]["replicas"] == 1


def test_redis_keeps_an_append_only_file(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = redis["command"][-1].split("<<", 1)[0].split()
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


#: where the compose file's Redis reads its password
REDIS_SECRET = "/run/secrets/redis_password"
#: the networks and who is on them: only the front and the API face the outside; Redis and
#: PostgreSQL are on the internal network alone; workers reach the fleet through egress
NETWORKS = {"front": {"front", "api"},
            "back": {"api", "migrate", "worker", "beat", "redis", "postgres"},
            "egress": {"worker"}}


def _members(document: dict[str, Any]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for name, service in document["services"].items():
        for network in service.get("networks", ["default"]):
            out.setdefault(network, set()).add(name)
    return out


def test_networks_keep_redis_and_postgres_internal(compose: dict[str, Any]) -> None:
    """Before: one default network, so the internet-facing Caddy (and the demo agents)
    could reach an unauthenticated Redis."""
    assert _members(compose) == NETWORKS
    assert compose["networks"]["back"] == {"internal": True}
    assert not compose["networks"]["front"] and not compose["networks"]["egress"]
    demo = load(DEMO)
    agents = {name for name, service in demo["services"].items() if "image" in service}
    assert agents and {network for name in agents
                       for network in demo["services"][name]["networks"]} == {"egress"}


def _local(script: str, secret: Path, port: int) -> str:
    """A compose shell script run on this machine: compose's $$ unescaped, the secret at
    ``secret``, Redis on ``port``."""
    return (script.replace("$$", "$").replace(REDIS_SECRET, str(secret))
            .replace("docker-entrypoint.sh ", "")
            .replace(" <<EOF", f" --port {port} --bind 127.0.0.1 --dir {secret.parent} <<EOF")
            .replace("redis-cli ping", f"redis-cli -p {port} ping"))


def test_redis_requires_the_password_from_its_secret(compose: dict[str, Any],
                                                     tmp_path: Path) -> None:
    """Redis started by the compose file's own script refuses a client without the
    password, its healthcheck passes with it and fails with another, the controller's
    broker URL carries it (from the env file), and it is in no process's argv."""
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: apt-get install redis-server")
    redis = compose["services"]["redis"]
    assert redis["secrets"] == ["redis_password"]
    assert compose["secrets"]["redis_password"]["file"] == "deploy/compose/secrets/redis_password"
    assert redis["command"][:2] == ["sh", "-c"]
    script = redis["command"][2]
    assert script.startswith("exec docker-entrypoint.sh redis-server - ")
    assert f"requirepass $$(cat {REDIS_SECRET})" in script
    check = redis["healthcheck"]["test"]
    assert check[0] == "CMD-SHELL" and REDIS_SECRET in check[1]
    for name, service in compose["services"].items():
        if image_of(service) == CONTROLLER_IMAGE:
            assert "RELAYFLEET_BROKER_URL" not in service["environment"], name
    assert re.search(r"^RELAYFLEET_BROKER_URL=redis://:PASSWORD@redis:6379/0$",
                     ENV_EXAMPLE.read_text(), re.M)

    password = os.urandom(12).hex()
    secret = tmp_path / "redis_password"
    secret.write_text(password + "\n")
    port = free_port()
    server = subprocess.Popen(["sh", "-c", _local(script, secret, port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_tcp(port, server, "redis-server")
        assert password not in (Path(f"/proc/{server.pid}/cmdline").read_bytes()
                                .decode(errors="replace"))
        anonymous = subprocess.run(["redis-cli", "-p", str(port), "ping"],
                                   capture_output=True, text=True, timeout=30, check=False)
        assert anonymous.stdout.startswith("NOAUTH"), anonymous
        healthcheck = ["sh", "-c", _local(check[1], secret, port)]
        assert subprocess.run(healthcheck, timeout=30, check=False).returncode == 0
        secret.write_text("not-the-password\n")
        assert subprocess.run(healthcheck, timeout=30, check=False).returncode != 0
    finally:
        server.kill()
        server.wait(timeout=30)


def test_json_logs_everywhere(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if image_of(service) == CONTROLLER_IMAGE:
            assert service["environment"]["RELAYFLEET_LOG_FORMAT"] == "json", name


def _literal_secrets(document: dict[str, Any], where: str) -> list[str]:
    found = []
    for name, service in document.get("services", {}).items():
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        for key, value in environment.items():
            text = "" if value is None else str(value)
            if _SECRETISH.search(key) and text and not _REFERENCE.match(text) and not (
                    key.endswith("_FILE") and text.startswith("/run/secrets/")):
                found.append(f"{where}: {name}: {key}")
            if re.search(r"://[^/@\s]*:[^/@\s]+@", text):
                found.append(f"{where}: {name}: {key} holds a URL with a password")
    return found


def test_no_secret_is_written_in_the_compose_files(compose: dict[str, Any]) -> None:
    assert _literal_secrets(compose, "docker-compose.yml") == []
    assert _literal_secrets(load(DEMO), "demo.yml") == []
    for name, service in compose["services"].items():
        if image_of(service) == CONTROLLER_IMAGE:
            assert service["env_file"] == ["deploy/compose/relayfleet.env"], name
    postgres = compose["services"]["postgres"]["environment"]
    assert "POSTGRES_PASSWORD" not in postgres
    assert postgres["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert compose["secrets"]["postgres_password"]["file"].startswith("deploy/compose/")
    ignored = (ROOT / "deploy" / "compose" / ".gitignore").read_text().split()
    assert {"relayfleet.env", "secrets/"} <= set(ignored)


def test_the_check_finds_a_literal_secret() -> None:
    planted = {"services": {"x": {"environment": {
        "RELAYFLEET_SECRET_KEY": "hunter2hunter2hunter2", "OK": "${RELAYFLEET_SECRET_KEY}",
        "RELAYFLEET_DATABASE_URL": "postgresql://u:pw@db/x", "POSTGRES_PASSWORD": "pw"}}}}
    assert len(_literal_secrets(planted, "t")) == 3


def settings_the_code_reads() -> set[str]:
    """Every RELAYFLEET_* name in the server's code (the operator CLI, controller/client,
    runs on an operator's machine and has its own variables)."""
    names: set[str] = set()
    for package in ("controller", "agent", "shared"):
        for path in (ROOT / package).rglob("*.py"):
            if "client" in path.relative_to(ROOT).parts[:2]:
                continue
            names |= set(re.findall(r"\bRELAYFLEET_[A-Z0-9_]+", path.read_text()))
    return names - NOT_SERVER_SETTINGS


def test_every_setting_is_documented_in_the_env_example() -> None:
    read = settings_the_code_reads()
    # What config.py reads must be among them (the scan finds the settings themselves).
    config = (ROOT / "controller" / "config.py").read_text()
    read_there = set(re.findall(r'"(RELAYFLEET_[A-Z0-9_]+)"', config))
    assert read_there and read_there <= read
    assert {"RELAYFLEET_LOG_FORMAT", "RELAYFLEET_SECRET_KEY"} <= read
    documented = set(re.findall(r"^(?:# )?(RELAYFLEET_[A-Z0-9_]+)=", ENV_EXAMPLE.read_text(),
                                re.MULTILINE))
    assert read - documented == set(), "not in deploy/compose/relayfleet.env.example"
    # and the example holds no value for a secret
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.startswith(("RELAYFLEET_SECRET_KEY=", "RELAYFLEET_CALLBACK_SECRET=")):
            assert line.endswith("="), line
