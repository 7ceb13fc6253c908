"""web console sessions

Revision ID: 0005
Revises: 0004
Create Date: 2027-01-20 09:00:00

- ``console_sessions``: one row per signed-in browser of the web console. The cookie holds
  a random secret; the row only its SHA-256 (``secret_sha256``, unique: the lookup key),
  the token it was opened with (``token_id``; revoking the token ends the session at its
  next request, deleting the token deletes the row), the session's CSRF token, when it
  was opened, when it ends whatever happens (``expires_at``), when it was last used
  (``last_seen_at``, for the idle time) and the address it was opened from.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import controller.db

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    # A new table: nothing existing is copied or rewritten.
    op.create_table('console_sessions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('secret_sha256', sa.String(length=64), nullable=False),
    sa.Column('token_id', sa.Integer(), nullable=False),
    sa.Column('csrf_token', sa.String(length=64), nullable=False),
    sa.Column('created_at', controller.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', controller.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', controller.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('remote_addr', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['token_id'], ['tokens.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('secret_sha256'),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('console_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_console_sessions_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_console_sessions_token_id'), ['token_id'], unique=False)


def downgrade() -> None:
    """Undo this revision."""
    with op.batch_alter_table('console_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_console_sessions_token_id'))
        batch_op.drop_index(batch_op.f('ix_console_sessions_expires_at'))

    op.drop_table('console_sessions')
