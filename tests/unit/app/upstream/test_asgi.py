"""AsgiUpstream: an engine that is an ASGI app answers as a server would, streams included."""

import asyncio

import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.upstream.asgi import AsgiUpstream
from app.upstream.client import UpstreamConnectError, UpstreamError, UpstreamTimeoutError

URL = "http://engine:8000"


async def _echo(scope: Scope, receive: Receive, send: Send) -> None:
    body = (await receive())["body"]
    headers = [(b"content-type", b"application/json; charset=utf-8"), (b"x-path", scope["path"].encode())]
    headers += [(b"x-seen", dict(scope["headers"]).get(b"x-request-id", b"-"))]
    await send({"type": "http.response.start", "status": 201, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def test_a_request_reaches_its_app_and_the_answer_comes_back_whole() -> None:
    async with AsgiUpstream({URL: _echo}) as upstream:
        response = await upstream.post(f"{URL}/v1/chat/completions", b'{"a":1}', {"x-request-id": "r1"})
        assert (response.status, response.content_type) == (201, "application/json")
        assert response.headers["x-path"] == "/v1/chat/completions"
        assert response.headers["x-seen"] == "r1"
        assert await response.read() == b'{"a":1}'
        assert await upstream.get(f"{URL}/health", within=1.0) == (201, b"")


async def test_a_stream_arrives_chunk_by_chunk_as_the_app_sends_it() -> None:
    release = asyncio.Event()

    async def stream(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await release.wait()
        await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": False})

    async with AsgiUpstream({URL: stream}) as upstream:
        response = await upstream.post(URL + "/s", b"", {})
        chunks = response.iter_chunks()
        assert await asyncio.wait_for(anext(chunks), 1.0) == b"data: 1\n\n"  # before the app is done
        release.set()
        assert [chunk async for chunk in chunks] == [b"data: 2\n\n"]


async def test_closing_an_answer_tells_the_app_its_client_left() -> None:
    told: list[Message] = []

    async def endless(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        told.append(await receive())  # what a server says once the client is gone

    async with AsgiUpstream({URL: endless}) as upstream:
        response = await upstream.post(URL, b"", {})
        response.close()
        for _ in range(100):
            if told:
                break
            await asyncio.sleep(0.01)
    assert told == [{"type": "http.disconnect"}]


async def test_no_app_at_a_url_is_a_refused_connection() -> None:
    engines: dict[str, ASGIApp] = {URL: _echo}
    async with AsgiUpstream(engines) as upstream:
        del engines[URL]  # the engine went down
        with pytest.raises(UpstreamConnectError):
            await upstream.post(URL, b"", {})


async def test_an_app_that_fails_before_answering_is_a_500_and_after_a_broken_body() -> None:
    async def fails_first(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    async def fails_later(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise RuntimeError("boom")

    async with AsgiUpstream({URL: fails_first, "http://later": fails_later}) as upstream:
        first = await upstream.post(URL, b"", {})
        assert (first.status, await first.read()) == (500, b"Internal Server Error")
        later = await upstream.post("http://later/x", b"", {})
        chunks = later.iter_chunks()
        assert await anext(chunks) == b"part"
        with pytest.raises(UpstreamError):
            await anext(chunks)


async def test_a_get_that_takes_too_long_times_out() -> None:
    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(10)

    async with AsgiUpstream({URL: slow}) as upstream:
        with pytest.raises(UpstreamTimeoutError):
            await upstream.get(URL + "/health", within=0.05)
