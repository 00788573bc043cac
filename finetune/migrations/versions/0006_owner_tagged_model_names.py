"""fine-tuned model names carry their owner's tag: ft:<base>:<owner tag>:<suffix>:<job id>

Revision ID: 0006
Revises: 0005
"""

import base64
import hashlib
import re

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# The naming as this revision wrote it (protocol/fine_tuning.py then), kept here as it was: a
# later change of the naming is a later revision's.
_NAME_PART = re.compile(r"[^A-Za-z0-9_.-]")


def _tag(owner: str) -> str:
    digest = hashlib.sha256(b"fine-tuned-model-owner\0" + owner.encode("utf-8", "surrogatepass")).digest()
    return base64.b32encode(digest[:10]).decode("ascii").lower()


def _base(base: str) -> str:
    part = base.replace("/", "--")
    clean = _NAME_PART.sub("-", part)
    if clean == part and "--" not in base:  # (an id with a `--` of its own could be another's `/`)
        return clean
    return f"{clean}-{hashlib.sha256(base.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def _rename(named: str) -> None:
    jobs = sa.table(
        "jobs",
        sa.column("id", sa.String),
        sa.column("owner", sa.String),
        sa.column("model", sa.String),
        sa.column("suffix", sa.String),
        sa.column("fine_tuned_model", sa.String),
    )
    connection = op.get_bind()
    rows = connection.execute(sa.select(jobs).where(jobs.c.fine_tuned_model.is_not(None))).all()
    for row in rows:
        if named == "tagged":
            name = f"ft:{_base(row.model)}:{_tag(row.owner)}:{row.suffix or ''}:{row.id}"
        else:
            name = f"ft:{row.model}:{row.suffix or ''}:{row.id}"
        connection.execute(sa.update(jobs).where(jobs.c.id == row.id).values(fine_tuned_model=name))


def upgrade() -> None:
    # Whose a model is was looked up in this database by its job id; it is now read from the
    # name, so a name without the tag would be nobody's. (Adapters already loaded under the old
    # names stay there until retired; the embedded worker loads the new names at its start.)
    _rename("tagged")


def downgrade() -> None:
    _rename("plain")
