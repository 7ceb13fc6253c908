"""agent TLS: pinned certificate fingerprint, explicit plain HTTP

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 06:00:00

- ``hosts.agent_tls_fingerprint``: SHA-256 of the agent's DER certificate (64 hex digits),
  pinned like an SSH host key; ``NULL``: trust ``agent_ca_cert`` or the system's CAs.
- ``hosts.agent_insecure_http``: the token may go to an ``http://`` agent URL in clear.
  Hosts that already had an ``http://`` URL get ``true``, so that an upgrade changes no
  fleet's behaviour without its operator seeing it: the flag shows in every host answer.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    # Plain ADD COLUMNs (a literal default, no table copy on SQLite).
    op.add_column('hosts', sa.Column('agent_tls_fingerprint', sa.String(length=64),
                                     nullable=True))
    op.add_column('hosts', sa.Column('agent_insecure_http', sa.Boolean(), nullable=False,
                                     server_default='0'))
    op.execute(sa.text("UPDATE hosts SET agent_insecure_http = :yes "
                       "WHERE agent_url LIKE 'http://%'").bindparams(yes=True))


def downgrade() -> None:
    """Undo this revision."""
    op.drop_column('hosts', 'agent_insecure_http')
    op.drop_column('hosts', 'agent_tls_fingerprint')
