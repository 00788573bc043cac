"""A TCP fault proxy for tests and benchmarks, between the gateway and one engine.

Runs its own event loop on a thread. Faults, set at any time with `set(...)`:
`pass` (relay), `down` (refuse connections), `reset` (accept, then reset the connection),
`stall` (accept and read, never answer), `cut` (relay, then cut the connection after
`cut_after` bytes of the answer); `latency_s` delays every connection's first answer bytes;
`one_way_s` delays every chunk both ways, in order (a link with that latency: RTT twice it).
"""

import asyncio
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any, Literal

from harness.servers import free_port

__all__ = ["FaultProxy"]

Fault = Literal["pass", "down", "reset", "stall", "cut"]


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._upstream_port = upstream_port
        self.fault: Fault = "pass"
        self._applied: Fault = "pass"
        self.latency_s = 0.0
        self.one_way_s = 0.0
        self.cut_after = 0
        self.connections = 0
        self.stalled = 0  # connections held without an answer right now
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()  # both sides of every relayed connection
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._run(self._listen())

    def set(self, fault: Fault = "pass", *, latency_s: float = 0.0, cut_after: int = 0, one_way_s: float = 0.0) -> None:
        """A new fault applies to every connection: open ones are dropped (the gateway keeps
        connections alive, and a fault on new ones only would never be seen)."""
        self.latency_s, self.cut_after, self.one_way_s = latency_s, cut_after, one_way_s
        self.fault = fault
        if fault != self._applied:
            self._run(self._drop_connections())
        if fault == "down" and self._server is not None:
            self._run(self._close())
        elif fault != "down" and self._server is None:
            self._run(self._listen())
        self._applied = fault

    def close(self) -> None:
        try:
            self._run(self._shut_down(), timeout_s=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, None], timeout_s: float = 5) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def _close(self) -> None:
        """Stop listening and drop every connection, as a machine that went away would."""
        if self._server is not None:
            # Accept no more, then let the connections already accepted get their transports
            # (from tasks of their own) before the server closes: on Python 3.11 a transport
            # made for a closed server fails (Server._attach asserts) and leaks its socket.
            loop = asyncio.get_running_loop()
            for listening in self._server.sockets:
                loop.remove_reader(listening.fileno())
            await asyncio.sleep(0)
            self._server.close()
            self._server = None
        await self._drop_connections()

    async def _shut_down(self) -> None:
        """Close every connection and let every handler end before the loop stops: a socket
        left to a stopped loop would be closed only by the garbage collector, with a
        ResourceWarning in whatever test runs then."""
        self.fault = "down"  # for good: a connection accepted in the meantime is not served
        await self._close()
        deadline = asyncio.get_running_loop().time() + 3
        # Rounds: a connection accepted just before the close gets its transport, then its
        # handler, from tasks of their own that the round before did not see yet.
        while tasks := [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]:
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
            if pending:  # a handler still asleep (a long latency_s): end it rather than abandon it
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.sleep(0)  # the transports' last callbacks close their sockets

    async def _drop_connections(self) -> None:
        for writer in list(self._open):
            writer.transport.abort()
        await asyncio.sleep(0)  # let the handlers see their connections gone

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._open.add(writer)
        try:
            if self.fault == "down":  # accepted just before the proxy went away
                writer.transport.abort()
            else:
                await self._serve(reader, writer)
        finally:
            self._open.discard(writer)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        fault = self.fault
        if fault == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        if fault == "stall":
            self.stalled += 1
            try:
                while await reader.read(65536):
                    pass  # read whatever comes, answer nothing, until the client gives up
            finally:
                self.stalled -= 1
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        except OSError:
            return
        if writer.is_closing():  # dropped while connecting upstream: nothing left to relay
            up_writer.close()
            return
        self._open.add(up_writer)
        if self.one_way_s:
            await self._link(reader, writer, up_reader, up_writer)
            return
        to_engine = asyncio.create_task(self._pipe(reader, up_writer, limit=None))
        try:
            await self._pipe(up_reader, writer, limit=self.cut_after if fault == "cut" else None, delay=self.latency_s)
        finally:
            to_engine.cancel()
            await asyncio.gather(to_engine, return_exceptions=True)
            self._open.discard(up_writer)
            up_writer.close()

    @staticmethod
    async def _pipe(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, limit: int | None, delay: float = 0.0
    ) -> None:
        sent = 0
        if delay:
            await asyncio.sleep(delay)
        try:
            while data := await reader.read(65536):
                if limit is not None and sent + len(data) >= limit:
                    writer.write(data[: limit - sent])
                    await writer.drain()
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return  # the caller closes: a reset mid-answer
                writer.write(data)
                sent += len(data)
                await writer.drain()
        except (ConnectionError, OSError):
            return

    async def _link(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        try:
            await asyncio.gather(
                self._delayed(reader, up_writer, self.one_way_s), self._delayed(up_reader, writer, self.one_way_s)
            )
        finally:
            self._open.discard(up_writer)
            up_writer.close()

    @staticmethod
    async def _delayed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
        """Each chunk written `delay` after it was read, in order; the end passed on likewise."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        delivering = asyncio.create_task(deliver())
        try:
            while True:
                data = await reader.read(65536)
                queue.put_nowait((loop.time() + delay, data))
                if not data:
                    break
            await delivering
        except (ConnectionError, OSError):
            delivering.cancel()
