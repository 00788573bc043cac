"""The embedded default: a local Transformers engine process the gateway starts, waits for and stops."""

import asyncio
import logging
import os
import secrets
import socket
import sys
from pathlib import Path

from app.upstream.client import Upstream, UpstreamError
from protocol.processes import die_with_parent

__all__ = ["EmbeddedEngine", "EmbeddedEngineFailed"]

log = logging.getLogger(__name__)


class EmbeddedEngineFailed(RuntimeError):
    """The local engine did not come up."""


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedEngine:
    def __init__(self, *, model: str | None, data_dir: Path, start_timeout: float, host: str = "127.0.0.1") -> None:
        self._model = model
        self._data_dir = data_dir
        self._start_timeout = start_timeout
        self._host = host
        self._process: asyncio.subprocess.Process | None = None
        self._port = _free_port(host)  # chosen now: the pool that routes to it is built before it starts
        self.url = f"http://{host}:{self._port}"
        self.api_key = secrets.token_urlsafe(32)

    async def start(self, client: Upstream) -> None:
        """Start the engine; returns once it answers `/health`."""
        args = ["-m", "engines.transformers", "--host", self._host, "--port", str(self._port)]
        # Its key, so that nothing else on this host can use the engine behind the gateway's back.
        env = {**os.environ, "SWITCHYARD_ENGINE_API_KEY": self.api_key}
        args += ["--data-dir", str(self._data_dir), "--log-level", "warning"]
        if self._model:
            args += ["--model", self._model]
        log.info("starting the embedded engine on %s", self.url)
        self._process = await asyncio.create_subprocess_exec(sys.executable, *args, env=env, preexec_fn=die_with_parent)
        try:
            await asyncio.wait_for(self._wait_ready(client), self._start_timeout)
        except TimeoutError:
            await self.stop()
            raise EmbeddedEngineFailed(
                f"the embedded engine was not ready within {self._start_timeout:.0f} s"
            ) from None
        except BaseException:
            await self.stop()
            raise

    async def _wait_ready(self, client: Upstream) -> None:
        assert self._process is not None
        while True:
            if self._process.returncode is not None:
                raise EmbeddedEngineFailed(f"the embedded engine exited with status {self._process.returncode}")
            try:
                status, _ = await client.get(f"{self.url}/health", within=1.0)
                if status == 200:
                    return
            except UpstreamError:
                pass
            await asyncio.sleep(0.2)

    async def stop(self, grace: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            process.kill()
            await process.wait()
