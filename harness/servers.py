"""Real server processes for tests and benchmarks: start on a free port, wait until they answer, stop."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

__all__ = ["Redis", "ServerProcess", "free_port"]

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


GATEWAY_MODULES = ("app", "loadtests.timed_gateway")


class ServerProcess:
    """`python -m MODULE ARGS` with its output in a log file that failures print.

    A gateway runs with authentication disabled (it listens on loopback) unless `env` sets
    SWITCHYARD_AUTH_MODE: only the tests of authentication need tokens.
    """

    def __init__(
        self,
        module: str,
        args: Sequence[str],
        *,
        port: int,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        ready_path: str = "/health",
        host: str = "127.0.0.1",  # where it listens: any loopback address, for replicas of one port
    ) -> None:
        self.url = f"http://{host}:{port}"
        self._ready_path = ready_path
        self.log_path = log_dir / f"{module.replace('.', '_')}-{host}-{port}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
        if module in GATEWAY_MODULES:
            full_env["SWITCHYARD_AUTH_MODE"] = "disabled"
        full_env |= dict(env or {})
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 120.0) -> "ServerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + self._ready_path, timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


class Redis:
    """A redis-server of a test's own, on a free port, so a test may stop it.

    With `aof_dir`, it keeps an append-only file there (fsync on every write), so `kill` and
    `start` again is a crash and a restart that keeps what was written.
    """

    def __init__(self, aof_dir: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._aof_dir = aof_dir
        self.start()

    def start(self) -> None:
        durable = ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self._aof_dir)]
        args = ["--port", str(self.port), "--save", "", *(durable if self._aof_dir else ["--appendonly", "no"])]
        self.process = subprocess.Popen(["redis-server", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).stdout != b"PONG\n":
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
