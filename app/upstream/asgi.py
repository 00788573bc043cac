"""An `Upstream` that calls engines which are ASGI apps in this very process.

`AsgiUpstream({"http://engine-a": app_a, ...})` answers requests to those base URLs by running
the app on them, as a server would: streamed bodies arrive chunk by chunk as the app sends
them, a closed answer tells the app its client left, and an app that raises before its
response starts answers 500, after it a broken body. A URL with no app is a refused
connection, so removing an app from `apps` takes its engine down. Gateway tests use it to run
without engine processes; it is no HTTP parser, so what is about HTTP itself (limits, timing
over a socket) is tested against real servers.
"""

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, MutableMapping
from typing import Self
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message

from app.upstream.client import UpstreamConnectError, UpstreamError, UpstreamTimeoutError

__all__ = ["AsgiUpstream"]

_END = b""  # queued after the last body chunk (a real chunk is never empty: empty ones are not queued)


class _AsgiResponse:
    def __init__(
        self,
        status: int,
        headers: Headers,
        chunks: "asyncio.Queue[bytes | BaseException]",
        on_close: Callable[[], None],
    ) -> None:
        self.status = status
        self.headers: Mapping[str, str] = headers
        self._chunks = chunks
        self._on_close = on_close
        self._done = False

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "application/octet-stream").split(";", 1)[0].strip().lower()

    async def read(self) -> bytes:
        try:
            return b"".join([chunk async for chunk in self.iter_chunks()])
        finally:
            self.close()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        while not self._done:
            chunk = await self._chunks.get()
            if isinstance(chunk, BaseException):
                self._done = True
                raise UpstreamError("the engine broke off its answer") from chunk
            if chunk is _END:
                self._done = True
                return
            yield chunk

    def close(self) -> None:
        """As a closed connection: a read still waiting fails at once."""
        self._chunks.put_nowait(UpstreamError("the answer was closed"))
        self._on_close()


class AsgiUpstream:
    def __init__(self, apps: MutableMapping[str, ASGIApp], *, timeout_s: float = 60.0) -> None:
        self.apps = apps  # base URL (scheme://host:port) -> its engine
        self._timeout_s = timeout_s
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> _AsgiResponse:
        return await self._request("POST", url, body, headers)

    async def get(self, url: str, *, within: float, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        try:
            async with asyncio.timeout(within):
                response = await self._request("GET", url, b"", headers or {})
                return response.status, await response.read()
        except TimeoutError as exc:
            raise UpstreamTimeoutError(f"GET {url} timed out") from exc

    async def _request(self, method: str, url: str, body: bytes, headers: Mapping[str, str]) -> _AsgiResponse:
        parts = urlsplit(url)
        app = self.apps.get(f"{parts.scheme}://{parts.netloc}")
        if app is None:
            raise UpstreamConnectError(f"{method} {url} failed: no engine at {parts.netloc}")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": parts.scheme,
            "path": parts.path or "/",
            "raw_path": (parts.path or "/").encode(),
            "query_string": parts.query.encode(),
            "root_path": "",
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
            "client": ("127.0.0.1", 0),
            "server": (parts.hostname or "engine", parts.port or 80),
        }
        started: asyncio.Future[tuple[int, Headers]] = asyncio.get_running_loop().create_future()
        chunks: asyncio.Queue[bytes | BaseException] = asyncio.Queue()
        left = asyncio.Event()
        request_sent = False

        async def receive() -> Message:
            nonlocal request_sent
            if not request_sent:
                request_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await left.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if left.is_set():
                raise OSError("the client left")  # as a server's send to a closed connection
            if message["type"] == "http.response.start":
                started.set_result((message["status"], Headers(raw=message.get("headers", []))))
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    chunks.put_nowait(message["body"])
                if not message.get("more_body", False):
                    chunks.put_nowait(_END)

        async def run() -> None:
            try:
                await app(scope, receive, send)
            except asyncio.CancelledError as exc:  # cut off (its client left long ago, or the upstream closed)
                chunks.put_nowait(exc)
                if not started.done():  # for a request still waiting; none may be (it was cancelled too)
                    started.set_exception(UpstreamConnectError(f"{method} {url}: the engine was stopped"))
                    started.exception()  # so nobody waiting is no "never retrieved" warning
                raise
            except Exception as exc:
                if not started.done():  # what a server answers for an app that fails before answering
                    started.set_result((500, Headers({"content-type": "text/plain; charset=utf-8"})))
                    chunks.put_nowait(b"Internal Server Error")
                    chunks.put_nowait(_END)
                else:
                    chunks.put_nowait(exc)
            else:
                if not started.done():
                    started.set_exception(UpstreamError(f"{method} {url}: the engine sent no answer"))
                    started.exception()  # its waiter may have been cancelled: no "never retrieved" warning
                chunks.put_nowait(_END)

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            status, response_headers = await asyncio.shield(started)
        except BaseException:
            left.set()
            task.cancel()
            raise

        def close() -> None:
            left.set()
            if not task.done():
                task.get_loop().call_later(self._timeout_s, task.cancel)  # an app that ignores its client leaving

        return _AsgiResponse(status, response_headers, chunks, close)
