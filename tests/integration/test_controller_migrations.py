"""Alembic migrations create exactly the schema the models describe, on SQLite and
PostgreSQL, and ``init-db`` is safe to run again."""

from __future__ import annotations

import subprocess
import sys

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from controller.db import Base, make_engine
from controller.migrate import current, upgrade


def _head() -> str:
    from alembic.script import ScriptDirectory

    from controller.migrate import alembic_config

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


#: the newest migration (each release adds one)
HEAD = _head()

def test_migrations_match_the_models(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []
    upgrade(database_url)  # again: nothing to do
    assert current(database_url) == HEAD


def test_init_db_and_token_create_from_the_command_line(controller_env: dict[str, str]) -> None:
    cli = [sys.executable, "-m", "controller.cli"]
    done = subprocess.run([*cli, "init-db"], capture_output=True, text=True, check=True,
                          env=controller_env | {"PATH": "/usr/bin:/bin"})
    assert f"revision {HEAD}" in done.stdout
    made = subprocess.run([*cli, "token", "create", "--role", "operator", "--tenant", "Acme"],
                          capture_output=True, text=True, check=True,
                          env=controller_env | {"PATH": "/usr/bin:/bin"})
    token = made.stdout.strip().splitlines()[-1]
    assert token.startswith("rft_") and " " not in token
    from tests.controller_client import Controller

    controller = Controller.create()
    listed = controller.ok("GET", "/v1/hosts", token=token)
    assert listed["total"] == 0
    tenants = controller.ok("GET", "/v1/tenants", token=token)["items"]
    assert [t["name"] for t in tenants] == ["Acme"]
    helptext = subprocess.run([*cli, "--help"], capture_output=True, text=True, check=True)
    assert "RELAYFLEET_DATABASE_URL" in helptext.stdout
