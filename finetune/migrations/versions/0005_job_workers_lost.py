"""how often a job's worker died, apart from how often it was claimed

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # `attempts` counts claims (it fences a worker whose lease lapsed); `lost` counts only the
    # claims that found the last worker dead: a released job is no death. Before, every claim
    # after the first was one.
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lost", sa.Integer(), nullable=False, server_default="0"))
    op.execute("UPDATE jobs SET lost = CASE WHEN attempts > 1 THEN attempts - 1 ELSE 0 END")


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("lost")
