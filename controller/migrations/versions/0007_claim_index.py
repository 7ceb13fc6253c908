"""the claim's indexes: a job's units by status in wave and id order; unfinished jobs
by tenant

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 16:20:00

A claim takes the lowest-numbered pending unit of a job. With units indexed by
(job_id, status) only, PostgreSQL walked the primary key past every unit already done,
so each claim cost grew with the job (a 10,000-host job: quadratic). With ``id`` as the
index's last column the lowest pending unit is the first entry read. A claim limited to
its tenant's share counts the running units of the tenant's jobs: of its unfinished
ones only, found by a partial index, whatever the number of jobs the tenant ever ran.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table('job_hosts', schema=None) as batch_op:
        batch_op.drop_index('ix_job_hosts_job_status')
        batch_op.create_index('ix_job_hosts_claim', ['job_id', 'status', 'wave', 'id'],
                              unique=False)
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_unfinished_tenant', ['tenant_id'], unique=False,
                              sqlite_where=sa.text('finished_at IS NULL'),
                              postgresql_where=sa.text('finished_at IS NULL'))


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_unfinished_tenant')
    with op.batch_alter_table('job_hosts', schema=None) as batch_op:
        batch_op.drop_index('ix_job_hosts_claim')
        batch_op.create_index('ix_job_hosts_job_status', ['job_id', 'status'], unique=False)
