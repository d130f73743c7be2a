"""dimension lineage by construction: no trigger foreign keys from dimensions to etl.load_run_files

The dimensions lose their FOREIGN KEY (load_file_id) -> etl.load_run_files, as the facts did in 0009: a
per-row trigger check each (1.75 s for 243k inferred patients at 1M Appointments). A merge writes a
dimension's load_file_id from the stg rows of the files it merges and marks merged in the same
transaction, and counts the rows whose lineage names no ledger row (etl.dq_results check 'orphans',
relation core.dim_<x>.load_file_id -> etl.load_run_files.file_id), which fail the merge. Downgrade puts
the constraints back (validated against the rows present).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 18:25:00
"""
from typing import Sequence, Union

from alembic import op


revision: str = '0010'
down_revision: Union[str, None] = '0009'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

DIMENSIONS = ('dim_medicine', 'dim_patient', 'dim_practice', 'dim_provider', 'dim_vaccine')


def upgrade() -> None:
    for table in DIMENSIONS:
        op.drop_constraint(op.f(f'fk_{table}_load_file_id_load_run_files'), table, schema='core', type_='foreignkey')


def downgrade() -> None:
    for table in DIMENSIONS:
        op.create_foreign_key(op.f(f'fk_{table}_load_file_id_load_run_files'), table, 'load_run_files',
                              ['load_file_id'], ['file_id'], source_schema='core', referent_schema='etl')
