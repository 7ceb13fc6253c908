"""Pooled PostgreSQL connections are checked for life without a round trip per checkout
(controller.db): a warm connection is used as it is, one the server closed (an
administrator's terminate, a restart) or one idle for long is pinged first and replaced
when dead, so the transaction that takes it never sees the outage. Real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text

from controller import db
from controller.db import make_engine


@pytest.fixture
def engine(postgres_server: Any) -> Iterator[Engine]:
    """An engine as the worker makes it, on a database of the test's own."""
    made = make_engine(postgres_server.new_database())
    yield made
    made.dispose()


@pytest.fixture
def pings(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the engine's pings (each still runs for real)."""
    seen: list[int] = []
    real = engine.dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        seen.append(1)
        return bool(real(dbapi_connection))

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    return seen


def _backend(engine: Engine) -> int:
    with engine.begin() as connection:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(engine: Engine, pids: set[int]) -> None:
    """An administrator's ``pg_terminate_backend`` of ``pids``, from a connection of its own,
    waiting until each backend has ended (the second argument, PostgreSQL 14+): without
    it, the server may not yet have closed the socket when the pool next looks at it,
    and a connection is handed out in the instant between (a race the pool cannot close,
    and not what these tests are about)."""
    admin = make_engine(engine.url.render_as_string(hide_password=False))
    try:
        with admin.begin() as connection:
            for pid in pids:
                ended = connection.execute(text("SELECT pg_terminate_backend(:pid, 30000)"),
                                           {"pid": pid}).scalar_one()
                assert ended, f"backend {pid} did not end within 30 s of its terminate"
    finally:
        admin.dispose()


def test_a_warm_connection_is_used_without_a_ping(engine: Engine, pings: list[int]) -> None:
    first = _backend(engine)
    assert [_backend(engine) for _ in range(5)] == [first] * 5
    assert pings == []


def test_a_connection_the_server_closed_is_replaced_before_use(
        engine: Engine, pings: list[int]) -> None:
    old = _backend(engine)
    _terminate(engine, {old})
    new = _backend(engine)  # (no error: the dead connection never reached the caller)
    assert new != old
    assert len(pings) == 1


def test_connections_cut_by_a_postgres_restart_are_replaced_before_use(
        engine: Engine, postgres_server: Any) -> None:
    held = [engine.connect() for _ in range(3)]  # three connections in the pool
    for connection in held:
        connection.close()
    before = _backend(engine)
    postgres_server.restart(down_s=0.5)
    after = [_backend(engine) for _ in range(4)]
    assert before not in after


def test_a_long_idle_connection_is_pinged(engine: Engine, pings: list[int],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    first = _backend(engine)
    monkeypatch.setattr(db, "PING_IDLE_S", 0.0)
    assert _backend(engine) == first
    assert len(pings) == 1


def test_every_pooled_connection_older_than_a_failed_one_is_replaced(
        engine: Engine, pings: list[int]) -> None:
    held = [engine.connect() for _ in range(3)]
    olds = {int(c.execute(text("SELECT pg_backend_pid()")).scalar_one()) for c in held}
    for connection in held:
        connection.rollback()
        connection.close()
    _terminate(engine, olds)
    fresh = {_backend(engine) for _ in range(3)}
    assert not fresh & olds
