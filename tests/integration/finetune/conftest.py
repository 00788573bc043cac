"""A fresh PostgreSQL database per test, on the server at 127.0.0.1:5432 (trust auth), dropped
after it."""

import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest

SERVER = "127.0.0.1:5432"


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    name = f"switchyard_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(f"postgresql://postgres@{SERVER}/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql+asyncpg://postgres@{SERVER}/{name}"
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()
