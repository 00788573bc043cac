"""The engine server in process over a fake engine with a short reply and a short context."""

from collections.abc import AsyncIterator

import httpx
import pytest

from engines.fake import FakeEngine
from engines.server.api import create_app


@pytest.fixture
def fake() -> FakeEngine:
    return FakeEngine("Hello world. Bye.", max_model_len=64)


@pytest.fixture
async def client(fake: FakeEngine) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(fake))
    async with httpx.AsyncClient(transport=transport, base_url="http://engine") as http:
        yield http
