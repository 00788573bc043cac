"""jobs claimed in the order they came

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Jobs recorded before this migration keep their order: their creation second.
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("enqueued_at", sa.Double(), nullable=True))
    op.execute("UPDATE jobs SET enqueued_at = created_at")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        # The default: gateways of the version before, still running during a rollout, insert none.
        batch_op.alter_column("enqueued_at", existing_type=sa.Double(), nullable=False, server_default="0")
        batch_op.create_index(batch_op.f("ix_jobs_enqueued_at"), ["enqueued_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_enqueued_at"))
        batch_op.drop_column("enqueued_at")
