"""Hot statements (an API request's, a lane's per host), compiled once and handed straight
to the driver.

SQLAlchemy's way from ``session.execute`` to the driver's cursor (the execution context:
parameter checks, type processing, the result object) costs about 70 µs of CPU per
statement on top of the driver's own 30 µs (PostgreSQL, measured by
``tests/benchmarks/api_profile.py``); ``POST /v1/jobs`` sends seven statements, and that
path was half of its CPU. A :class:`Precompiled` statement is compiled by SQLAlchemy, for
each dialect and set of parameter names, the first time it runs; after that a call is the
parameters' type processing, one cursor ``execute`` and the rows.

What it keeps of SQLAlchemy's way: the session's connection and transaction (its BEGIN;
SQLite's ``BEGIN IMMEDIATE``), every bind and result type's processing (JSON, timestamps),
SQLAlchemy's exception classes (a duplicate key is still an ``IntegrityError``; parameters
never shown), and the invalidation of a connection the server closed. What it leaves:
cursor events. When anything listens to them (a tracer, a statement counter), the
statement takes SQLAlchemy's usual way instead, so that they see every statement.

A statement with lists (``IN``) is expanded for each call's lists by SQLAlchemy's own
``construct_expanded_state``. Many rows go into one table by :class:`RowsInsert`: multi-row
``VALUES`` statements, each a :class:`Precompiled`. Statements with column defaults
computed in Python do not qualify (their values come from SQLAlchemy's execution context):
compiling one is refused. Each pooled connection keeps one driver cursor for them.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table, bindparam, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, MultipleResultsFound, NoResultFound
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import Select, UpdateBase

#: a bind or result processor (what a column type does to a value on its way)
_Processor = Callable[[Any], Any]


class Fetched:
    """What a statement answered: its rows (read by attribute, as SQLAlchemy's are) and how
    many rows it changed (``-1`` where the driver does not say)."""

    def __init__(self, rows: Sequence[Any], rowcount: int = -1) -> None:
        self.rows = rows
        self.rowcount = rowcount

    def all(self) -> list[Any]:
        """Every row."""
        return list(self.rows)

    def first(self) -> Any:
        """The first row, ``None`` if there is none."""
        return self.rows[0] if self.rows else None

    def one_or_none(self) -> Any:
        """The one row, ``None`` if there is none; more than one is an error."""
        if len(self.rows) > 1:
            raise MultipleResultsFound("more than one row where at most one was expected")
        return self.first()

    def scalar_one(self) -> Any:
        """The first column of the one row; no row, or more than one, is an error."""
        if not self.rows:
            raise NoResultFound("no row where one was expected")
        return self.one_or_none()[0]


@dataclass(frozen=True)
class _Plan:
    """A statement compiled for one dialect and set of parameter names."""

    sql: str
    #: SQL's parameters, as compiled (fixed values included), to be overlaid by a call's
    fixed: dict[str, Any]
    #: bind name -> its type's processor, for the binds that have one
    bind_processors: dict[str, _Processor]
    #: the parameters' order in ``sql`` (positional drivers, e.g. SQLite), else ``None``
    order: tuple[str, ...] | None
    #: the row type and each returned column's processor; ``None``: no rows returned
    row: type | None
    result_processors: tuple[_Processor | None, ...]
    #: the compiled statement, when it has lists that expand at each call (``IN``)
    expanding: Any = None

    def arguments(self, params: Mapping[str, Any]) -> Any:
        """The driver's parameters for one call (of a statement without lists)."""
        return _for_driver({**self.fixed, **params}, self.bind_processors.items(), self.order)

    def sql_and_arguments(self, params: Mapping[str, Any]) -> tuple[str, Any]:
        """The SQL and the driver's parameters for one call: a statement with lists is
        expanded for this call's (SQLAlchemy's ``construct_expanded_state``: the SQL
        names one parameter per item)."""
        if self.expanding is None:
            return self.sql, self.arguments(params)
        state = self.expanding.construct_expanded_state(params)
        return state.statement, _for_driver(
            dict(state.parameters), (*self.bind_processors.items(), *state.processors.items()),
            None if self.order is None else state.positiontup)

    def rows(self, fetched: Sequence[Sequence[Any]]) -> list[Any]:
        """Driver rows as rows read by attribute, each value processed."""
        assert self.row is not None
        processors = self.result_processors
        return [self.row(*(value if process is None else process(value)
                           for value, process in zip(raw, processors, strict=True)))
                for raw in fetched]


class Precompiled:
    """A fixed Core statement run on a session's connection through the driver's cursor
    (see the module's docstring for what that keeps and leaves)."""

    def __init__(self, statement: Select[Any] | UpdateBase) -> None:
        self.statement = statement
        # (read on a copy: SQLAlchemy memoizes it on the statement, and statements derived
        # from this one later, e.g. by .returning(), would inherit it stale)
        self._columns = list(statement.execution_options().exported_columns)
        self._plans: dict[tuple[str, tuple[str, ...]], _Plan] = {}

    def execute(self, session: Session, params: Mapping[str, Any]) -> Fetched:
        """Run the statement with ``params`` in the session's transaction."""
        return self._run(session, [params], many=False)

    def execute_many(self, session: Session, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run the statement once per set of parameters (each with the same names), by the
        driver's ``executemany`` (as SQLAlchemy sends a many-row INSERT without RETURNING)."""
        if self._columns:
            raise ValueError("execute_many returns no rows: use a statement without them")
        if rows:
            self._run(session, rows, many=True)

    def _run(self, session: Session, rows: Sequence[Mapping[str, Any]],
             many: bool) -> Fetched:
        connection = session.connection()
        dialect = connection.dialect
        key = (dialect.name, tuple(rows[0]))
        plan = self._plans.get(key)
        if plan is None:  # (compiled either way: a statement unfit for this is refused)
            plan = self._plans[key] = self._compile(dialect, key[1])
        if many and plan.expanding is not None:
            raise ValueError("a statement with lists (IN) cannot run as executemany")
        if _cursor_events_listened(connection):
            result = session.execute(self.statement, [dict(row) for row in rows] if many
                                     else dict(rows[0]))
            return Fetched(list(result) if self._columns else [],
                           getattr(result, "rowcount", -1))
        dbapi_connection, cursor = _kept_cursor(connection)
        try:
            if many:
                cursor.executemany(plan.sql, [plan.arguments(row) for row in rows])
            else:
                cursor.execute(*plan.sql_and_arguments(rows[0]))
            fetched = cursor.fetchall() if plan.row is not None else []
            rowcount = cursor.rowcount
        except dialect.loaded_dbapi.Error as exc:
            gone = dialect.is_disconnect(exc, dbapi_connection, cursor)
            if gone:
                connection.invalidate(exc)
            raise DBAPIError.instance(plan.sql, None, exc, dialect.loaded_dbapi.Error,
                                      hide_parameters=True, connection_invalidated=gone,
                                      dialect=dialect) from exc
        return Fetched(plan.rows(fetched) if plan.row is not None else [], rowcount)

    def _compile(self, dialect: Dialect, names: tuple[str, ...]) -> _Plan:
        compiled: Any = self.statement.compile(dialect=dialect, column_keys=list(names))
        needs_context = [
            f"{what}: {', '.join(str(item) for item in items)}" for what, items in (
                ("column defaults computed in Python", [*compiled.insert_prefetch,
                                                        *compiled.update_prefetch]),
                ("escaped parameter names", list(compiled.escaped_bind_names)))
            if items]
        if needs_context:
            raise ValueError("this statement needs SQLAlchemy's execution context ("
                             + "; ".join(needs_context) + "): run it with session.execute")
        expanding = {bind.key for bind in (*compiled.literal_execute_params,
                                           *compiled.post_compile_params)}
        # (by the names the SQL uses: an anonymous bind is in ``binds`` under those and
        # under its anonymous name too; a list's items are processed by its expansion)
        fixed = dict(compiled.construct_params(dict.fromkeys(names)))
        bind_processors = {}
        for name in fixed:
            if name in expanding:
                continue
            process = compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                bind_processors[name] = process
        columns = self._columns
        return _Plan(
            sql=compiled.string, fixed=fixed,
            bind_processors=bind_processors,
            order=tuple(compiled.positiontup) if dialect.positional else None,
            # (a name read twice, e.g. two tables' ``id``, is read by position: renamed)
            row=namedtuple("Row", [str(column.key) for column in columns],
                           rename=True) if columns else None,
            result_processors=tuple(column.type.dialect_impl(dialect).result_processor(
                dialect, None) for column in columns),
            expanding=compiled if expanding else None)


class RowsInsert:
    """An INSERT of many rows into ``table``, sent as multi-row ``VALUES`` statements of up
    to ``per_statement`` rows each, each a :class:`Precompiled` (one per row count).

    A job's units go in this way: for a few rows, one statement instead of the driver's
    executemany, which psycopg runs as a pipeline (3 rows: 100 µs of CPU against 170 µs);
    for thousands, one statement per ``per_statement`` rows instead of one per row (1,000
    rows: 3.7 ms against 16 ms). Measured on PostgreSQL, in turns.
    """

    def __init__(self, table: Table, columns: Sequence[str], per_statement: int = 50) -> None:
        self.table = table
        self.columns = tuple(columns)
        self.per_statement = per_statement
        #: each row's bind names, by its place in a statement
        self._names = [tuple(f"{column}_{place}" for column in self.columns)
                       for place in range(per_statement)]
        self._statements: dict[int, Precompiled] = {}

    def execute(self, session: Session, rows: Sequence[Sequence[Any]]) -> None:
        """Insert ``rows`` (each a value per column, in ``columns``' order) in the session's
        transaction."""
        full, rest = divmod(len(rows), self.per_statement)
        size = self.per_statement
        if full:
            self._statement(size).execute_many(session, [
                self._params(rows[start:start + size]) for start in range(0, full * size, size)])
        if rest:
            self._statement(rest).execute(session, self._params(rows[full * size:]))

    def _params(self, rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
        return {name: value for names, row in zip(self._names, rows, strict=False)
                for name, value in zip(names, row, strict=True)}

    def _statement(self, count: int) -> Precompiled:
        statement = self._statements.get(count)
        if statement is None:
            columns = self.table.c
            statement = self._statements[count] = Precompiled(insert(self.table).values([
                {column: bindparam(name, type_=columns[column].type)
                 for column, name in zip(self.columns, names, strict=True)}
                for names in self._names[:count]]))
        return statement


def _for_driver(values: dict[str, Any], processors: Iterable[tuple[str, _Processor]],
                order: Sequence[str] | None) -> Any:
    """``values`` processed by their types, as the driver takes them: by name, or in
    ``order`` (positional drivers)."""
    for name, process in processors:
        values[name] = process(values[name])
    return values if order is None else tuple(values[name] for name in order)


#: where a pooled connection keeps its cursor (in the pool's ``info`` of that connection)
_KEPT_CURSOR = "relayfleet_precompiled_cursor"


def _kept_cursor(connection: Connection) -> tuple[Any, Any]:
    """The driver connection under ``connection`` and the cursor kept with it.

    One cursor per driver connection, made at its first statement and reused (a pooled
    connection serves one thread at a time): a psycopg cursor keeps the loaders of the
    types it has read, and a fresh one builds them again, about 20 µs of CPU a statement
    on this box. The cursor is kept beside the driver connection it was made on, so that
    one the pool has reconnected since gets a cursor of its own.
    """
    pooled = connection.connection
    dbapi_connection = pooled.dbapi_connection
    assert dbapi_connection is not None
    kept = pooled.info.get(_KEPT_CURSOR)
    if kept is None or kept[0] is not dbapi_connection:
        kept = pooled.info[_KEPT_CURSOR] = (dbapi_connection, dbapi_connection.cursor())
    return kept


def _cursor_events_listened(connection: Connection) -> bool:
    """Whether anything listens to this connection's (or its engine's) cursor events."""
    dispatch = connection.dispatch
    return bool(dispatch.before_cursor_execute or dispatch.after_cursor_execute)
