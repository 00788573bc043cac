"""Fresh PostgreSQL databases per test, on the server at 127.0.0.1:5432 (trust auth), dropped
after it: `postgres_url` for one, `postgres_urls` for as many as a test asks."""

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

SERVER = "127.0.0.1:5432"


@pytest.fixture
async def postgres_urls() -> AsyncIterator[Callable[[], Awaitable[str]]]:
    made: list[str] = []
    admin = await asyncpg.connect(f"postgresql://postgres@{SERVER}/postgres")

    async def new() -> str:
        name = f"switchyard_test_{secrets.token_hex(6)}"
        await admin.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return f"postgresql+asyncpg://postgres@{SERVER}/{name}"

    try:
        yield new
        for name in made:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def postgres_url(postgres_urls: Callable[[], Awaitable[str]]) -> str:
    return await postgres_urls()
