"""Precompiled statements (the API's hot statements, sent straight to the driver) answer what
SQLAlchemy's own execution answers, on SQLite and PostgreSQL: the same rows and types, the
same exception classes, and the usual way whenever a cursor event is listened to."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, NoResultFound
from sqlalchemy.orm import Session

from controller.db import UtcDateTime, make_engine
from controller.precompiled import Precompiled, RowsInsert

_META = MetaData()
_PROBES = Table("precompiled_probes", _META,
                Column("id", Integer, primary_key=True),
                Column("name", String(40), nullable=False, unique=True),
                Column("doc", JSON, nullable=True),
                Column("at", UtcDateTime, nullable=True),
                Column("state", String(10), nullable=True))
_DEFAULTED = Table("precompiled_defaulted", _META,
                   Column("id", Integer, primary_key=True),
                   Column("name", String(40), default=lambda: "made in Python"))

_ADD = Precompiled(insert(_PROBES).returning(_PROBES.c.id))
_ADD_MANY = Precompiled(insert(_PROBES))
_BY_NAME = Precompiled(select(_PROBES.c.id, _PROBES.c.name, _PROBES.c.doc, _PROBES.c.at,
                              _PROBES.c.state).where(_PROBES.c.name == bindparam("name")))
_CLOSE = Precompiled(update(_PROBES).where(_PROBES.c.id == bindparam("probe_id")).values(
    state="closed", doc=bindparam("b_doc", type_=_PROBES.c.doc.type)))

AT = dt.datetime(2026, 12, 6, 8, 30, 15, 250000, tzinfo=dt.UTC)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    the_engine = make_engine(database_url)
    _META.create_all(the_engine)
    yield the_engine
    the_engine.dispose()


@pytest.fixture(params=["driver", "listened"])
def session(request: pytest.FixtureRequest, engine: Engine) -> Iterator[Session]:
    """A session; "listened": something listens to cursor events (the usual way is taken)."""
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    if request.param == "listened":
        event.listen(engine, "before_cursor_execute", note)
    with Session(engine) as the_session:
        yield the_session
    if request.param == "listened":
        event.remove(engine, "before_cursor_execute", note)
        assert seen, "the listener saw no statement: the usual way was not taken"


def test_rows_and_types_come_back_as_sqlalchemy_gives_them(session: Session) -> None:
    probe_id = _ADD.execute(session, {"name": "pbx1", "doc": {"relay": ["smtp", 25]},
                                      "at": AT}).scalar_one()
    _ADD_MANY.execute_many(session, [{"name": f"pbx{n}", "doc": None, "at": None}
                                     for n in (2, 3)])
    session.commit()
    row = _BY_NAME.execute(session, {"name": "pbx1"}).one_or_none()
    assert (row.id, row.name, row.doc, row.at, row.state) == (
        probe_id, "pbx1", {"relay": ["smtp", 25]}, AT, None)
    assert row.at.tzinfo is not None  # UtcDateTime's result processing ran (SQLite: naive)
    assert _BY_NAME.execute(session, {"name": "nowhere"}).one_or_none() is None
    with pytest.raises(NoResultFound):
        _BY_NAME.execute(session, {"name": "nowhere"}).scalar_one()
    # an UPDATE with a fixed value and a JSON parameter
    assert _CLOSE.execute(session, {"probe_id": probe_id, "b_doc": {"n": 1}}).rows == []
    session.commit()
    closed = _BY_NAME.execute(session, {"name": "pbx1"}).one_or_none()
    assert (closed.state, closed.doc) == ("closed", {"n": 1})
    names = session.execute(select(_PROBES.c.name).order_by(_PROBES.c.name)).scalars().all()
    assert names == ["pbx1", "pbx2", "pbx3"]


def test_a_duplicate_is_an_integrity_error_that_shows_no_parameter(session: Session) -> None:
    _ADD.execute(session, {"name": "pbx1", "doc": None, "at": AT})
    session.commit()
    with pytest.raises(IntegrityError) as caught:
        _ADD.execute(session, {"name": "pbx1", "doc": {"secret": "hunter2"}, "at": AT})
    assert "hunter2" not in str(caught.value)
    session.rollback()
    # the session goes on after its rollback, as after SQLAlchemy's own error
    assert _ADD.execute(session, {"name": "pbx2", "doc": None, "at": None}).scalar_one() > 0
    session.commit()


def test_statements_that_need_the_execution_context_are_refused(session: Session) -> None:
    with pytest.raises(ValueError, match="column defaults computed in Python"):
        Precompiled(insert(_DEFAULTED)).execute(session, {"id": 1})
    with pytest.raises(ValueError, match="cannot run as executemany"):
        Precompiled(update(_PROBES).where(_PROBES.c.name.in_(bindparam(
            "names", expanding=True))).values(state="x")).execute_many(
            session, [{"names": ["pbx1"]}])
    with pytest.raises(ValueError, match="returns no rows"):
        _ADD.execute_many(session, [{"name": "pbx9", "doc": None, "at": None}])
    # nothing was sent: the session goes on
    assert _BY_NAME.execute(session, {"name": "pbx9"}).one_or_none() is None


_LISTED = Precompiled(select(_PROBES.c.name, _PROBES.c.at).where(
    _PROBES.c.name.in_(bindparam("names", expanding=True)),
    _PROBES.c.state.in_(("open", "closed")), _PROBES.c.at > bindparam("after", type_=UtcDateTime))
                      .order_by(_PROBES.c.name))


def test_lists_expand_for_each_call(session: Session) -> None:
    _ADD_MANY.execute_many(session, [{"name": f"pbx{n}", "doc": None, "at": AT}
                                     for n in range(1, 5)])
    session.execute(update(_PROBES).values(state="open"))
    before = AT - dt.timedelta(seconds=1)
    # a list given at the call (of any length) and one in the statement (literal values)
    for names in (["pbx2"], ["pbx3", "pbx1", "nowhere"], ["pbx4", "pbx2"]):
        rows = _LISTED.execute(session, {"names": names, "after": before}).all()
        assert [(row.name, row.at) for row in rows] == [(name, AT) for name in sorted(
            set(names) - {"nowhere"})]
    # the timestamp outside the list is processed too (UtcDateTime: SQLite stores naive)
    assert _LISTED.execute(session, {"names": ["pbx1"], "after": AT}).all() == []
    session.rollback()


_ADD_ROWS = RowsInsert(_PROBES, ("name", "doc", "at"), per_statement=4)


@pytest.mark.parametrize("count", [0, 1, 3, 4, 9])
def test_rows_go_in_by_multi_row_statements_of_any_count(session: Session, count: int) -> None:
    # 9 rows: two full statements of 4 (one executemany) and one of 1
    rows = [(f"pbx{n}", {"n": n} if n % 2 else None, AT if n % 3 else None)
            for n in range(count)]
    _ADD_ROWS.execute(session, rows)
    session.commit()
    stored = session.execute(select(_PROBES.c.name, _PROBES.c.doc, _PROBES.c.at)
                             .order_by(_PROBES.c.id)).all()
    assert [tuple(row) for row in stored] == rows  # in order, JSON and timestamps processed


def test_a_duplicate_row_rolls_back_with_the_rest(session: Session) -> None:
    with pytest.raises(IntegrityError):
        _ADD_ROWS.execute(session, [("pbx1", None, None), ("pbx2", None, None),
                                    ("pbx1", {"secret": "hunter2"}, None)])
    session.rollback()
    assert session.execute(select(_PROBES.c.name)).all() == []


def test_a_connection_the_pool_made_again_gets_a_cursor_of_its_own(session: Session) -> None:
    _ADD.execute(session, {"name": "pbx1", "doc": None, "at": None})
    session.commit()
    before = session.connection().connection.dbapi_connection
    session.connection().invalidate()  # (as after the server closed it)
    session.rollback()
    assert _BY_NAME.execute(session, {"name": "pbx1"}).one_or_none().name == "pbx1"
    assert session.connection().connection.dbapi_connection is not before
