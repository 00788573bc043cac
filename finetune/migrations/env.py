"""Alembic's environment: migrations run on the connection `finetune.db.Database.migrate`
hands over (no URL here: the database is the caller's)."""

from alembic import context

from finetune.schema import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
context.run_migrations()
