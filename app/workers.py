"""Several worker processes on one port (`workers` > 1).

The parent binds the socket, starts the workers (spawned, so each builds its own app), and
passes them SIGTERM and SIGINT: each worker drains as a lone gateway would (app/reliability/drain.py),
and the parent exits 0 once all have. A worker that dies while serving is replaced. uvicorn's
own supervisor runs plain servers, which would not drain, hence this one.

The workers write their metrics to a fresh folder (`PROMETHEUS_MULTIPROC_DIR`) that any of
them sums on a scrape; a dead worker's gauges leave the sum with it.
"""

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from types import FrameType

import uvicorn
from prometheus_client.multiprocess import mark_process_dead
from starlette.types import ASGIApp

__all__ = ["STARTUP_FAILURE", "Supervisor", "worker_exit"]

log = logging.getLogger(__name__)

STARTUP_FAILURE = 3  # a worker's exit status when its app did not start (uvicorn's too)
_POLL_S = 0.2
_CRASH_LOOP = 3  # workers in a row that died within _EARLY_S of starting: stop trying
_EARLY_S = 10.0

Worker = Callable[[list[str], list[socket.socket], Callable[[ASGIApp], ASGIApp] | None], None]


class Supervisor:
    def __init__(
        self,
        worker: Worker,
        argv: list[str],
        count: int,
        host: str,
        port: int,
        wrap: Callable[[ASGIApp], ASGIApp] | None = None,
    ) -> None:
        self._worker = worker
        self._argv = argv
        self._count = count
        self._wrap = wrap
        self._socket = uvicorn.Config(app="", host=host, port=port).bind_socket()  # binds only
        self._context = multiprocessing.get_context("spawn")
        self._processes: list[BaseProcess] = []
        self._started: dict[int, float] = {}
        self._early_deaths = 0
        self._stopping = False
        self._failure: int | None = None  # the exit status when the workers could not be kept up

    def run(self) -> int:
        """Serve until every worker has exited; the exit status for the whole gateway."""
        folder = tempfile.mkdtemp(prefix="switchyard-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder  # the workers inherit it
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._processes = [self._start() for _ in range(self._count)]
            return self._watch(folder)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._socket.close()
            shutil.rmtree(folder, ignore_errors=True)

    def _start(self) -> BaseProcess:
        process = self._context.Process(
            target=self._worker, args=(self._argv, [self._socket], self._wrap), name="switchyard-worker"
        )
        process.start()
        assert process.pid is not None
        self._started[process.pid] = time.monotonic()
        log.info("worker %d started", process.pid)
        return process

    def _watch(self, folder: str) -> int:
        """Until every worker has gone: 0 when told to stop, else why they went. (A worker
        still starting when told to stop ends as by the signal or as not started: that is a stop.)"""
        while self._processes:
            time.sleep(_POLL_S)
            for index, process in enumerate(list(self._processes)):
                if process.exitcode is None:
                    continue
                assert process.pid is not None
                mark_process_dead(process.pid, folder)  # type: ignore[no-untyped-call]
                self._processes.remove(process)
                if self._stopping:
                    continue
                if self._gives_up(process.pid, process.exitcode):
                    self._stopping = True
                    self._failure = STARTUP_FAILURE if process.exitcode == STARTUP_FAILURE else 1
                    self._forward(signal.SIGTERM)
                    continue
                log.error("worker %d died with status %s; starting another", process.pid, process.exitcode)
                self._processes.insert(index, self._start())
        return self._failure or 0

    def _gives_up(self, pid: int, status: int) -> bool:
        """Whether a worker's death ends the gateway: it could not start, or workers keep dying young."""
        if status == STARTUP_FAILURE:
            log.error("worker %d failed to start; stopping the others", pid)
            return True
        early = time.monotonic() - self._started.pop(pid) < _EARLY_S
        self._early_deaths = self._early_deaths + 1 if early else 0
        if self._early_deaths >= _CRASH_LOOP:
            log.error("%d workers in a row died within %.0f s of starting; stopping", _CRASH_LOOP, _EARLY_S)
            return True
        return False

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._stopping = True
        self._forward(sig)

    def _forward(self, sig: int) -> None:
        for process in self._processes:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, sig)


def worker_exit(started: bool) -> None:
    """How a worker ends: a startup failure is told apart so the parent does not respawn it."""
    sys.exit(0 if started else STARTUP_FAILURE)
