"""What the file and job stores share: ids, a record looked up for its owner, and newest-first
pages by (created_at, id) after a cursor."""

import re
import secrets
from typing import Any, TypeVar

from sqlalchemy import Select, tuple_

from finetune.db import Database
from finetune.schema import File, Job

__all__ = ["UnknownCursor", "is_id", "new_id", "owned", "paged"]

Owned = TypeVar("Owned", File, Job)
_ID = re.compile(r"[a-z]+-[A-Za-z0-9]{24}")


class UnknownCursor(LookupError):
    """`after` names nothing of the owner's (or of the job's) to page from."""


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_urlsafe(18).replace('-', 'a').replace('_', 'b')}"


def is_id(prefix: str, value: str) -> bool:
    """Whether `value` could be an id `new_id(prefix)` made: checked before it reaches a query
    (a NUL or an overlong string would be the database's error, a 500)."""
    return value.startswith(f"{prefix}-") and _ID.fullmatch(value) is not None


async def owned(database: Database, kind: type[Owned], prefix: str, record_id: str, owner: str) -> Owned | None:
    """The record `record_id` when it is `owner`'s; None for another owner's, as for none."""
    if not is_id(prefix, record_id):
        return None
    async with database.sessions() as session:
        record = await session.get(kind, record_id)
    return record if record is not None and record.owner == owner else None


def paged(
    query: Select[Any], kind: type[Owned], cursor: Owned | None, limit: int, newest_first: bool = True
) -> Select[Any]:
    """`query` ordered by (created_at, id), newest first (or oldest), past `cursor` when given."""
    order = (kind.created_at, kind.id)
    if cursor is not None:
        past = (cursor.created_at, cursor.id)
        query = query.where(tuple_(*order) < past if newest_first else tuple_(*order) > past)
    keys = [column.desc() for column in order] if newest_first else list(order)
    return query.order_by(*keys).limit(limit)
