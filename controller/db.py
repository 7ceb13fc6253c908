"""The database: one engine per process, sessions per request or per task.

SQLite (the default) gets WAL, foreign keys, a busy timeout and ``BEGIN IMMEDIATE`` so that
concurrent writers wait their turn instead of failing; PostgreSQL needs nothing special.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from typing import Any, cast

from flask import Flask, g
from sqlalchemy import DateTime, Engine, Table, create_engine, event
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator


class Base(DeclarativeBase):
    """Declarative base of every controller table."""


class UtcDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite stores it naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps must carry a timezone")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        stamp: dt.datetime = value
        return stamp.replace(tzinfo=dt.UTC) if stamp.tzinfo is None else stamp.astimezone(dt.UTC)


def table_of(model: type[Base]) -> Table:
    """The table a model maps: statements built on it take SQLAlchemy's Core path, which
    costs a fraction of the ORM's (for the hot statements of a request)."""
    return cast(Table, model.__table__)


def utcnow() -> dt.datetime:
    """The current time in UTC."""
    return dt.datetime.now(dt.UTC)


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the settings relayfleet relies on."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 60})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # A deferred transaction that later writes can fail at once with "database is
            # locked" when another writer got there first; IMMEDIATE waits for its turn.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


class Database:
    """Flask extension: ``db.session`` is the current request's session."""

    def __init__(self, app: Flask | None = None) -> None:
        self.engine: Engine | None = None
        self.sessionmaker: sessionmaker[Session] | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Bind to the app's ``RELAYFLEET_SETTINGS.database_url``."""
        self.engine = make_engine(app.config["RELAYFLEET_SETTINGS"].database_url)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        app.extensions["relayfleet_db"] = self

        @app.teardown_appcontext
        def _close_session(_exc: BaseException | None) -> None:
            session = g.pop("db_session", None)
            if session is not None:
                session.close()
            connection = g.pop("db_connection", None)
            if connection is not None:
                connection.close()

    @property
    def session(self) -> Session:
        """The session of the current app context (made on first use).

        It keeps one connection for the whole context, through all its transactions: a
        request that commits more than once (an Idempotency-Key, then the job) takes a
        connection from the pool, and pings it, once.
        """
        if "db_session" not in g:
            assert self.engine is not None and self.sessionmaker is not None, (
                "Database.init_app was not called")
            g.db_connection = self.engine.connect()
            g.db_session = self.sessionmaker(bind=g.db_connection)
        session: Session = g.db_session
        return session

    def new_session(self) -> Session:
        """A session of its own (for work outside a request)."""
        assert self.sessionmaker is not None, "Database.init_app was not called"
        return self.sessionmaker()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session of its own that commits on success and rolls back on error."""
        with self.new_session() as session, session.begin():
            yield session


db = Database()
