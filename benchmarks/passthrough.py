"""The reference for the gateway benchmark: the thinnest FastAPI pass-through that can exist.

No validation, no routing, no errors mapped: read the body, POST it to one
engine with aiohttp, relay the answer (SSE chunk by chunk). Whatever the
gateway costs above this is the price of its features.
"""

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse


def create_app(upstream: str) -> FastAPI:
    state: dict[str, aiohttp.ClientSession] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1024)) as session:
            state["session"] = session
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await request.body()
        response = await state["session"].post(
            upstream + "/v1/chat/completions", data=body, headers={"content-type": "application/json"}
        )
        if response.content_type == "text/event-stream":

            async def relay() -> AsyncIterator[bytes]:
                async for chunk in response.content.iter_any():
                    yield chunk
                response.release()

            return StreamingResponse(relay(), media_type="text/event-stream")
        return Response(await response.read(), status_code=response.status, media_type=response.content_type)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.passthrough", description=__doc__)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, default=8300)
    args = parser.parse_args()
    uvicorn.run(create_app(args.upstream), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
