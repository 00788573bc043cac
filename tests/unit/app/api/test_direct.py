"""GatewayApp: the generating routes are served directly, with the same answers as FastAPI's."""

import httpx
import pytest
from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.direct import GatewayApp
from app.errors import CATCH_ALL, InvalidRequest, install_error_handlers
from protocol.asgi import ClientDisconnected


async def _answer(request: Request) -> JSONResponse:
    match request.headers.get("x-do"):
        case "refuse":
            raise InvalidRequest("Not like this.", param="x-do")
        case "gone":
            raise ClientDisconnected
        case "bug":
            raise RuntimeError("a bug")
    return JSONResponse({"served": "directly", "app": request.app.title})


class _Tag:
    """A middleware that marks what passed through it."""

    def __init__(self, app: ASGIApp, name: str) -> None:
        self.app = app
        self.name = name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("tags", []).append(self.name)
        await self.app(scope, receive, send)


def _app(seen: list[list[str]]) -> GatewayApp:
    async def tags(request: Request) -> JSONResponse:
        seen.append(list(request.scope.get("tags", [])))
        return await _answer(request)

    app = GatewayApp(
        direct=[Route("/v1/direct", tags, methods=["POST"])],
        middleware=[(_Tag, {"name": "outer"}), (_Tag, {"name": "inner"}), CATCH_ALL],
        title="t",
    )
    install_error_handlers(app)
    return app


@pytest.fixture
def seen() -> list[list[str]]:
    return []


async def _post(app: GatewayApp, method: str = "POST", **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        return await client.request(method, "/v1/direct", headers=headers)


async def test_a_direct_route_runs_its_middleware_in_order_and_knows_its_app(seen: list[list[str]]) -> None:
    response = await _post(_app(seen))
    assert response.json() == {"served": "directly", "app": "t"}
    assert seen == [["outer", "inner"]]


async def test_its_errors_are_the_envelope_as_through_fastapi(seen: list[list[str]]) -> None:
    refused = await _post(_app(seen), **{"x-do": "refuse"})
    assert refused.status_code == 400
    assert refused.json()["error"] == {
        "message": "Not like this.",
        "type": "invalid_request_error",
        "param": "x-do",
        "code": None,
    }
    assert (await _post(_app(seen), **{"x-do": "gone"})).status_code == 499
    bug = await _post(_app(seen), **{"x-do": "bug"})
    assert bug.status_code == 500
    assert bug.json()["error"]["message"] == "The gateway had an internal error."  # never the bug's words


async def test_another_method_is_fastapis_405_in_the_envelope(seen: list[list[str]]) -> None:
    response = await _post(_app(seen), "GET")
    assert response.status_code == 405
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert seen == []  # the handler never ran
