"""`/sync/adapters…`: the region's sync sidecar's adapter API (sync/routes/adapters.py),
relayed for the console, which reaches only its gateway.

The caller needs a token with scope `adapters` or `admin` here, for reads too: the sidecar's
reads are open because only the cluster reaches it, and this route is public. The token goes
on to the sidecar, which checks its writes itself. Bodies stream both ways (an adapter upload
is never held whole); the sidecar's answers, errors included, come back as it gave them.
"""

from urllib.parse import quote

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from app.api.deps import guard_of
from app.errors import NotFound, UnsupportedMediaType, UpstreamFailed

__all__ = ["SyncRelay", "router"]

_REQUEST_HEADERS = ("authorization", "content-type")
_UPLOAD_TYPES = ("application/x-tar", "application/gzip", "application/x-gzip")  # the sidecar's upload types
_RESPONSE_HEADERS = ("content-type", "www-authenticate", "retry-after")
_SCOPES = ("adapters", "admin")


class SyncNotConfigured(NotFound):
    code = "sync_not_configured"


router = APIRouter(include_in_schema=False)


class SyncRelay:
    """The client to the sidecar: one per app, closed with it."""

    def __init__(self, url: str | None) -> None:
        self.url = url.rstrip("/") if url else None
        # Reads and deletes answer at once; an upload's answer waits for the adapter's checks.
        self._timeout = httpx.Timeout(connect=5.0, read=30.0, write=30.0, pool=5.0)
        self._upload_timeout = httpx.Timeout(connect=5.0, read=600.0, write=600.0, pool=5.0)
        self._client = httpx.AsyncClient(timeout=self._timeout) if url else None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def forward(self, request: Request, path: str) -> StreamingResponse:
        if self._client is None or self.url is None:
            raise SyncNotConfigured("This gateway relays to no sync sidecar (set sync_url).")
        headers = {name: value for name in _REQUEST_HEADERS if (value := request.headers.get(name))}
        upload = request.method == "POST"
        if upload:  # an adapter archive, streamed through; never a publish from a path on the sidecar's disks
            if request.headers.get("content-type", "").split(";")[0].strip().lower() not in _UPLOAD_TYPES:
                raise UnsupportedMediaType(f"Publish an adapter as a tar archive ({', '.join(_UPLOAD_TYPES)}).")
            if length := request.headers.get("content-length"):
                headers["content-length"] = length
        outgoing = self._client.build_request(
            request.method,
            self.url + path,
            params=httpx.QueryParams(str(request.query_params)),
            headers=headers,
            content=request.stream() if upload else None,
            timeout=self._upload_timeout if upload else self._timeout,
        )
        try:
            answer = await self._client.send(outgoing, stream=True)
        except httpx.HTTPError as exc:
            raise UpstreamFailed(f"The region's sync sidecar did not answer ({type(exc).__name__}).") from None
        if answer.status_code == 401:  # a token this gateway took: the sidecar trusts another issuer
            await answer.aclose()
            raise UpstreamFailed(
                "The region's sync sidecar refused this gateway's token: its auth_issuer is not this gateway."
            )
        kept = {name: value for name in _RESPONSE_HEADERS if (value := answer.headers.get(name))}
        return StreamingResponse(answer.aiter_raw(), answer.status_code, kept, background=BackgroundTask(answer.aclose))


@router.api_route("/sync/adapters", methods=["GET", "POST"])
@router.api_route("/sync/adapters/{rest:path}", methods=["GET", "DELETE"])
async def relay(request: Request, rest: str = "") -> StreamingResponse:
    await guard_of(request).check(request.headers, _SCOPES)
    segments = rest.split("/") if rest else []
    if len(segments) > 3 or any(s in ("", ".", "..") for s in segments):
        raise NotFound("No such adapter route.")
    relay: SyncRelay = request.app.state.sync_relay
    return await relay.forward(request, "/".join(["/adapters", *(quote(s, safe="") for s in segments)]))
