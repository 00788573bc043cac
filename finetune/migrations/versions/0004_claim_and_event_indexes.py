"""indexes for claims and event pages

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_job_seq", ["job_id", "seq"], unique=False)

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_jobs_claimable",
            ["enqueued_at", "id"],
            unique=False,
            postgresql_where=sa.text("status IN ('validating_files', 'queued', 'running')"),
            sqlite_where=sa.text("status IN ('validating_files', 'queued', 'running')"),
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_jobs_claimable",
            postgresql_where=sa.text("status IN ('validating_files', 'queued', 'running')"),
            sqlite_where=sa.text("status IN ('validating_files', 'queued', 'running')"),
        )

    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_job_seq")
