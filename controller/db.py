"""The database: one engine per process, sessions per request or per task.

SQLite (the default) gets WAL, foreign keys, a busy timeout and ``BEGIN IMMEDIATE`` so that
concurrent writers wait their turn instead of failing. PostgreSQL connections are checked
for life on checkout without a round trip in the common case (:func:`_check_on_checkout`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import select
import time
from collections.abc import Iterator
from typing import Any, cast

from flask import Flask, g
from sqlalchemy import DateTime, Engine, Table, create_engine, event
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import InvalidatePoolError
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
    """An engine for ``url`` with the settings relayfleet relies on. Its errors never show
    a statement's parameters (they may be secrets, sealed or not, and errors get logged)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 60},
                               hide_parameters=True)

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
    # The newest idle connection is reused first (LIFO): the few a busy worker needs stay
    # warm and skip the ping a long-idle one gets (see _check_on_checkout).
    engine = create_engine(url, pool_size=10, max_overflow=20, pool_use_lifo=True,
                           pool_recycle=RECYCLE_S, hide_parameters=True)
    _check_on_checkout(engine)
    return engine


#: a pooled connection idle longer than this is pinged before use (one round trip): a
#: firewall or NAT that dropped it silently leaves nothing on its socket to see
PING_IDLE_S = 30.0
#: a connection older than this is replaced on checkout: a server session is not kept
#: for days (its memory grows with the catalog caches of every statement it ran)
RECYCLE_S = 1800
#: where the checkin time of a pooled connection is kept (its record's ``info``)
_CHECKED_IN = "relayfleet_checked_in"


def _unread(fileno: int) -> bool:
    """Whether an idle connection's socket has something to read or is closed: an idle
    PostgreSQL session is sent nothing, unless the server is closing it (a restart, an
    administrator's terminate, an idle timeout)."""
    poller = select.poll()
    poller.register(fileno, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


def _check_on_checkout(engine: Engine) -> None:
    """Hand out only live connections, pinging only those that may not be.

    ``pool_pre_ping`` would cost a round trip on every checkout (two or three per host
    of a job). Instead a connection is pinged when its socket shows the server closed it
    or sent something unasked (one ``poll``, no round trip), or when it sat idle longer
    than :data:`PING_IDLE_S`. A failed ping invalidates it and every older connection of
    the pool (they were cut by the same restart) and the pool connects anew, as the
    pre-ping did. A connection that dies between the check and its statement fails that
    transaction, and SQLAlchemy then invalidates the pool likewise.
    """
    dialect = engine.dialect

    @event.listens_for(engine, "checkin")
    def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info[_CHECKED_IN] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _check(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop(_CHECKED_IN, None)
        if since is None:
            return  # a new connection: just made, nothing to check
        try:
            suspect = (time.monotonic() - since > PING_IDLE_S
                       or _unread(dbapi_connection.fileno()))
            if suspect and not dialect.do_ping(dbapi_connection):
                raise InvalidatePoolError("the connection failed its ping")
        except InvalidatePoolError:
            raise
        except Exception as exc:
            # (a closed socket or a failed ping: the server is gone or restarted)
            raise InvalidatePoolError(f"the connection is unusable: {exc}") from exc


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
        request that commits more than once (the token's last-use note, then its change)
        takes a connection from the pool, and checks it (:func:`_check_on_checkout`), once.
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
