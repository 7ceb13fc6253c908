"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-25 09:38:16.904616
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import controller.db

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""

    op.create_table('audit_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', controller.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('token_id', sa.Integer(), nullable=True),
    sa.Column('token_name', sa.String(length=100), nullable=True),
    sa.Column('tenant_id', sa.Integer(), nullable=True),
    sa.Column('action', sa.String(length=100), nullable=False),
    sa.Column('target', sa.String(length=200), nullable=True),
    sa.Column('outcome', sa.Integer(), nullable=False),
    sa.Column('detail', sa.JSON(none_as_null=True), nullable=True),
    sa.Column('remote_addr', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_events_at'), ['at'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_events_tenant_id'), ['tenant_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_events_token_id'), ['token_id'], unique=False)

    op.create_table('idempotency_keys',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token_id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('request_sha256', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('response', sa.JSON(none_as_null=True), nullable=True),
    sa.Column('created_at', controller.db.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_id', 'key'),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_idempotency_keys_created_at'), ['created_at'], unique=False)

    op.create_table('tenants',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('created_at', controller.db.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name'),
    sqlite_autoincrement=True
    )
    op.create_table('jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tenant_id', sa.Integer(), nullable=True),
    sa.Column('token_id', sa.Integer(), nullable=True),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('target', sa.JSON(none_as_null=True), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('params_sealed', sa.Text(), nullable=True),
    sa.Column('options', sa.JSON(), nullable=False),
    sa.Column('callback_url', sa.String(length=2000), nullable=True),
    sa.Column('callback_state', sa.String(length=200), nullable=True),
    sa.Column('retry_of', sa.Integer(), nullable=True),
    sa.Column('total', sa.Integer(), nullable=False),
    sa.Column('heartbeat_at', sa.Float(), nullable=True),
    sa.Column('created_at', controller.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('started_at', controller.db.UtcDateTime(timezone=True), nullable=True),
    sa.Column('finished_at', controller.db.UtcDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_jobs_heartbeat_at'), ['heartbeat_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('sites',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tenant_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('created_at', controller.db.UtcDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tenant_id', 'name'),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('sites', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sites_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('public_id', sa.String(length=24), nullable=False),
    sa.Column('secret_sha256', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('role', sa.String(length=10), nullable=False),
    sa.Column('tenant_id', sa.Integer(), nullable=True),
    sa.Column('created_at', controller.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.Integer(), nullable=True),
    sa.Column('last_used_at', controller.db.UtcDateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', controller.db.UtcDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('public_id'),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tokens_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('hosts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tenant_id', sa.Integer(), nullable=False),
    sa.Column('site_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=253), nullable=False),
    sa.Column('address', sa.String(length=255), nullable=False),
    sa.Column('transport', sa.String(length=10), nullable=False),
    sa.Column('agent_url', sa.String(length=500), nullable=True),
    sa.Column('agent_token_sealed', sa.Text(), nullable=True),
    sa.Column('agent_ca_cert', sa.Text(), nullable=True),
    sa.Column('ssh_port', sa.Integer(), nullable=False),
    sa.Column('ssh_username', sa.String(length=64), nullable=True),
    sa.Column('ssh_private_key_sealed', sa.Text(), nullable=True),
    sa.Column('ssh_passphrase_sealed', sa.Text(), nullable=True),
    sa.Column('ssh_password_sealed', sa.Text(), nullable=True),
    sa.Column('ssh_host_key', sa.Text(), nullable=True),
    sa.Column('ssh_sudo', sa.Boolean(), nullable=False),
    sa.Column('mta_kind', sa.String(length=20), nullable=False),
    sa.Column('mta_flavour', sa.String(length=20), nullable=False),
    sa.Column('mta_overrides', sa.JSON(), nullable=False),
    sa.Column('created_at', controller.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', controller.db.UtcDateTime(timezone=True), nullable=True),
    sa.Column('last_reachable', sa.Boolean(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('last_job_id', sa.Integer(), nullable=True),
    sa.Column('queue_count', sa.Integer(), nullable=True),
    sa.Column('smarthost', sa.JSON(none_as_null=True), nullable=True),
    sa.Column('config_in_sync', sa.Boolean(), nullable=True),
    sa.Column('mta_running', sa.Boolean(), nullable=True),
    sa.ForeignKeyConstraint(['site_id'], ['sites.id'], ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('site_id', 'name'),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('hosts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_hosts_site_id'), ['site_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_hosts_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('host_tags',
    sa.Column('host_id', sa.Integer(), nullable=False),
    sa.Column('tag', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['host_id'], ['hosts.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('host_id', 'tag')
    )
    with op.batch_alter_table('host_tags', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_host_tags_tag'), ['tag'], unique=False)

    op.create_table('job_hosts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('host_id', sa.Integer(), nullable=False),
    sa.Column('host_name', sa.String(length=253), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('lease_until', sa.Float(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('data', sa.JSON(none_as_null=True), nullable=True),
    sa.Column('steps', sa.JSON(none_as_null=True), nullable=True),
    sa.Column('changed', sa.Boolean(), nullable=True),
    sa.Column('started_at', controller.db.UtcDateTime(timezone=True), nullable=True),
    sa.Column('finished_at', controller.db.UtcDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['host_id'], ['hosts.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('job_id', 'host_id'),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('job_hosts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_job_hosts_host_id'), ['host_id'], unique=False)
        batch_op.create_index('ix_job_hosts_job_status', ['job_id', 'status'], unique=False)




def downgrade() -> None:
    """Undo this revision."""

    with op.batch_alter_table('job_hosts', schema=None) as batch_op:
        batch_op.drop_index('ix_job_hosts_job_status')
        batch_op.drop_index(batch_op.f('ix_job_hosts_host_id'))

    op.drop_table('job_hosts')
    with op.batch_alter_table('host_tags', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_host_tags_tag'))

    op.drop_table('host_tags')
    with op.batch_alter_table('hosts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_hosts_tenant_id'))
        batch_op.drop_index(batch_op.f('ix_hosts_site_id'))

    op.drop_table('hosts')
    with op.batch_alter_table('tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tokens_tenant_id'))

    op.drop_table('tokens')
    with op.batch_alter_table('sites', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sites_tenant_id'))

    op.drop_table('sites')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_jobs_tenant_id'))
        batch_op.drop_index(batch_op.f('ix_jobs_status'))
        batch_op.drop_index(batch_op.f('ix_jobs_heartbeat_at'))

    op.drop_table('jobs')
    op.drop_table('tenants')
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_idempotency_keys_created_at'))

    op.drop_table('idempotency_keys')
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_events_token_id'))
        batch_op.drop_index(batch_op.f('ix_audit_events_tenant_id'))
        batch_op.drop_index(batch_op.f('ix_audit_events_at'))

    op.drop_table('audit_events')

