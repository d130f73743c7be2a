"""lifecycle: run and file leases, one nightly run per date, one running run per selection, superseded

etl.load_runs gains request_key (unique: 'nightly:<NZ date>' makes two beats' messages one run),
active_key (a unique index over running runs: two runs of one selection started at once are one run)
and lease_expires_at (renewed by every step; a running run past it has lost its driver).
etl.load_run_files gains lease_expires_at and leased_by (a worker's hold on a file; the reconciler
re-enqueues a pending or landed file whose lease expired) and the status 'superseded' (an older
version of a key whose newer version is taken). See worker/pipeline/lifecycle.py.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 12:10:00
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0007'
down_revision: Union[str, None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

TZ = postgresql.TIMESTAMP(timezone=True)
OLD_FILE_STATUSES = ("pending", "landed", "staged", "merged", "failed", "skipped", "duplicate")
NEW_FILE_STATUSES = OLD_FILE_STATUSES + ("superseded",)


def _statuses(values: tuple[str, ...]) -> str:
    return "status IN (" + ", ".join(f"'{v}'" for v in values) + ")"


def upgrade() -> None:
    op.add_column('load_runs', sa.Column('request_key', sa.Text(), nullable=True,
                  comment='Who asked, once: e.g. nightly:<NZ date> (one nightly run per date, whatever beat sends)'),
                  schema='etl')
    op.add_column('load_runs', sa.Column('active_key', sa.Text(), nullable=True,
                  comment='The selection: two running runs of one selection are one run'), schema='etl')
    op.add_column('load_runs', sa.Column('lease_expires_at', TZ, nullable=True,
                  comment='Renewed by each step; a running run past it has lost its driver (the reconciler acts)'),
                  schema='etl')
    op.execute("UPDATE etl.load_runs SET request_key = params ->> 'request_key' WHERE params ? 'request_key'")
    op.create_unique_constraint(op.f('uq_load_runs_request_key'), 'load_runs', ['request_key'], schema='etl')
    op.create_index('uq_load_runs_running_active_key', 'load_runs', ['active_key'], unique=True, schema='etl',
                    postgresql_where=sa.text("status = 'running'"))
    op.add_column('load_run_files', sa.Column('lease_expires_at', TZ, nullable=True,
                  comment='Set when a worker takes the file; pending/landed past it: the worker was lost'),
                  schema='etl')
    op.add_column('load_run_files', sa.Column('leased_by', sa.Text(), nullable=True,
                  comment='The process that took the lease (host and pid)'), schema='etl')
    op.drop_constraint(op.f('ck_load_run_files_status'), 'load_run_files', schema='etl')
    op.create_check_constraint(op.f('ck_load_run_files_status'), 'load_run_files', _statuses(NEW_FILE_STATUSES),
                               schema='etl')


def downgrade() -> None:
    op.execute("DELETE FROM etl.load_run_files WHERE status = 'superseded'")
    op.drop_constraint(op.f('ck_load_run_files_status'), 'load_run_files', schema='etl')
    op.create_check_constraint(op.f('ck_load_run_files_status'), 'load_run_files', _statuses(OLD_FILE_STATUSES),
                               schema='etl')
    op.drop_column('load_run_files', 'leased_by', schema='etl')
    op.drop_column('load_run_files', 'lease_expires_at', schema='etl')
    op.drop_index('uq_load_runs_running_active_key', table_name='load_runs', schema='etl')
    op.drop_constraint(op.f('uq_load_runs_request_key'), 'load_runs', schema='etl')
    op.drop_column('load_runs', 'lease_expires_at', schema='etl')
    op.drop_column('load_runs', 'active_key', schema='etl')
    op.drop_column('load_runs', 'request_key', schema='etl')
