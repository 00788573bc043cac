"""The HTTP client the gateway talks to engines with: an `Upstream` over aiohttp.

aiohttp, chosen by measurement (docs/benchmarks.md): it keeps several times
httpx's default pool's throughput at 32 concurrent requests. Everything else in
the gateway sees only the `Upstream` protocol (app/upstream/client.py).
"""

from collections.abc import AsyncIterator, Mapping

import aiohttp

from app.settings import GatewaySettings
from app.upstream.client import UpstreamConnectError, UpstreamError, UpstreamTimeoutError

__all__ = ["HttpUpstream"]


class _HttpResponse:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    @property
    def content_type(self) -> str:
        return self._response.content_type

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except TimeoutError as exc:
            raise UpstreamTimeoutError("the engine stopped answering") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError("the engine closed the connection before its answer was complete") from exc
        finally:
            self.close()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """Bytes as they arrive, without waiting to fill a buffer."""
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except TimeoutError as exc:
            raise UpstreamTimeoutError("the engine stopped streaming") from exc
        except aiohttp.ClientError as exc:
            # The client library's words (`TransferEncodingError: 400 ...`) stay in the cause, for the log.
            raise UpstreamError("the engine closed the connection before the stream was complete") from exc

    def close(self) -> None:
        """Return the connection to the pool if the body was read, else drop it so the engine stops."""
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class HttpUpstream:
    def __init__(self, *, connect_timeout: float, read_timeout: float, max_connections: int) -> None:
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=read_timeout)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def of(cls, settings: GatewaySettings) -> "HttpUpstream":
        return cls(
            connect_timeout=settings.connect_timeout_s,
            read_timeout=settings.read_timeout_s,
            max_connections=settings.max_upstream_connections,
        )

    async def __aenter__(self) -> "HttpUpstream":
        connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0, keepalive_timeout=60)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, auto_decompress=False, skip_auto_headers=("User-Agent",)
        )
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("HttpUpstream used outside its `async with` block")
        return self._session

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> _HttpResponse:
        """POST and wait for the response headers; the body is the caller's to read or stream."""
        return await self._request("POST", url, body, headers, None)

    async def get(self, url: str, *, within: float, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        """A small GET read whole (health and model probes)."""
        response = await self._request("GET", url, None, headers or {}, aiohttp.ClientTimeout(total=within))
        return response.status, await response.read()

    async def _request(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: Mapping[str, str],
        limits: aiohttp.ClientTimeout | None,
    ) -> _HttpResponse:
        try:
            response = await self.session.request(
                method, url, data=body, headers=headers, timeout=limits or self._timeout
            )
        except TimeoutError as exc:
            raise UpstreamTimeoutError(f"{method} {url} timed out") from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise UpstreamConnectError(f"{method} {url} failed: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"{method} {url} failed: {exc}") from exc
        return _HttpResponse(response)
