"""mta kind auto: the kind a host was found running

Revision ID: 0004
Revises: 0003
Create Date: 2027-01-12 09:00:00

- ``hosts.mta_detected_kind``: ``sendmail`` or ``postfix``, the MTA kind the host was last
  found running (its agent's ``/v1/status``, or what the SSH transport detected for a
  host configured ``mta.kind = "auto"``); ``NULL`` until a job has told. SSH runs of an
  ``auto`` host reuse it instead of detecting again; changing the host's ``mta``,
  ``transport`` or ``address`` forgets it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    # A plain nullable ADD COLUMN (no table copy on SQLite); existing hosts learn their
    # kind from their next job.
    op.add_column('hosts', sa.Column('mta_detected_kind', sa.String(length=20), nullable=True))


def downgrade() -> None:
    """Undo this revision."""
    op.drop_column('hosts', 'mta_detected_kind')
