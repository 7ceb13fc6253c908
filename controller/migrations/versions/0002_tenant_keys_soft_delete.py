"""per-tenant callback keys; soft-deleted hosts

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 10:00:00

- ``tenants.callback_key_sealed``: each tenant's callback signing key, sealed. Tenants made
  before this revision have none; one is made for them the first time a callback of theirs
  is signed (``controller.callbacks.callback_key``), and an MSP-wide admin rotates it to
  learn it.
- ``hosts.deleted_at``: hosts are soft-deleted so that past jobs keep their results; the
  unique (site, name) becomes a unique index over the hosts not deleted, so a name can be
  reused by a new host.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import controller.db

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

#: 0001 left the (site_id, name) unique constraint unnamed: PostgreSQL named it itself,
#: SQLite's batch copy names it by this convention so that it can be dropped.
_NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s_%(column_1_name)s"}
_LIVE = sa.text("deleted_at IS NULL")
#: SQLite's copy of the table must keep AUTOINCREMENT (ids never reused, see models.py)
_KEEP_AUTOINCREMENT = {"sqlite_autoincrement": True}


def _unique_name() -> str:
    bind = op.get_bind()
    return "hosts_site_id_name_key" if bind.dialect.name == "postgresql" \
        else "uq_hosts_site_id_name"


def _sqlite_foreign_keys_off() -> None:
    """On SQLite, switch foreign keys off for the rest of this migration connection.

    Dropping a unique constraint there means copying ``hosts`` and dropping the old table,
    and a DROP TABLE with foreign keys on runs the children's ON DELETE CASCADE: every
    ``job_hosts`` and ``host_tags`` row would go. The PRAGMA only works outside a
    transaction; the connection is thrown away after the migration (``env.py`` disposes
    its engine), so nothing else runs without foreign keys.
    """
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    raw = bind.connection.driver_connection
    assert raw is not None
    in_transaction = raw.in_transaction
    if in_transaction:
        raw.execute("COMMIT")
    raw.execute("PRAGMA foreign_keys=OFF")
    if in_transaction:
        raw.execute("BEGIN IMMEDIATE")


def _sqlite_foreign_key_check() -> None:
    """Fail the migration if the copy broke a reference (it should not)."""
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        broken = bind.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise RuntimeError(f"foreign keys broken by the migration: {broken}")


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table('tenants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('callback_key_sealed', sa.Text(), nullable=True))

    _sqlite_foreign_keys_off()
    with op.batch_alter_table('hosts', schema=None, naming_convention=_NAMING,
                              table_kwargs=_KEEP_AUTOINCREMENT) as batch_op:
        batch_op.add_column(sa.Column('deleted_at', controller.db.UtcDateTime(timezone=True),
                                      nullable=True))
        batch_op.drop_constraint(_unique_name(), type_='unique')
        batch_op.create_index('uq_hosts_site_name_live', ['site_id', 'name'], unique=True,
                              sqlite_where=_LIVE, postgresql_where=_LIVE)
    _sqlite_foreign_key_check()


def downgrade() -> None:
    """Undo this revision (fails if a deleted host's name was reused: rename it first)."""
    op.execute(sa.text("DELETE FROM hosts WHERE deleted_at IS NOT NULL "
                       "AND id NOT IN (SELECT host_id FROM job_hosts)"))
    _sqlite_foreign_keys_off()
    with op.batch_alter_table('hosts', schema=None, naming_convention=_NAMING,
                              table_kwargs=_KEEP_AUTOINCREMENT) as batch_op:
        batch_op.drop_index('uq_hosts_site_name_live')
        batch_op.create_unique_constraint(_unique_name(), ['site_id', 'name'])
        batch_op.drop_column('deleted_at')
    _sqlite_foreign_key_check()

    with op.batch_alter_table('tenants', schema=None) as batch_op:
        batch_op.drop_column('callback_key_sealed')
