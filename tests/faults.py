"""Fault injection on a TCP link: a loopback proxy to put between one process and Redis (or anything).

    with LinkProxy(redis_server.port) as proxy:
        start_daphne(REDIS_URL=proxy.url_for(db=0))
        proxy.cut()  # every open connection is reset, new ones too
        proxy.restore()  # forward again
        proxy.delay(0.3)  # 0.3 s more on each chunk, each way

The proxy runs its own asyncio loop in a thread of its own, so that sync and async tests alike can drive it:
its methods block the caller only until the proxy has done what they ask.
"""

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any

CHUNK = 64 * 1024
# Bytes held per direction: enough for large transfers at full speed under a delay (the bytes in flight
# during a delay are held here), small enough that a slow reader on one side slows the writer on the other
# down (back-pressure) instead of filling our memory.
HELD_BYTES = 8 * 1024 * 1024
CONNECT_TIMEOUT = 5.0
CALL_TIMEOUT = 10.0


def reset(writer: asyncio.StreamWriter) -> None:
    """Close the connection with an RST, not a FIN: SO_LINGER with a zero timeout, then abort."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Pipe:
    """The chunks between one direction's reader and writer, each with the time it is due, in order."""

    def __init__(self) -> None:
        self._items: deque[tuple[float, bytes] | None] = deque()  # None: EOF
        self._held = 0
        self._changed = asyncio.Condition()

    async def put(self, item: tuple[float, bytes] | None) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._held < HELD_BYTES)
            self._items.append(item)
            self._held += len(item[1]) if item else 0
            self._changed.notify_all()

    async def get(self) -> tuple[float, bytes] | None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._items)
            item = self._items.popleft()
            self._held -= len(item[1]) if item else 0
            self._changed.notify_all()
            return item


class _Link:
    """One client connection and the upstream connection it is forwarded to."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.task: asyncio.Task | None = None

    def reset(self) -> None:
        reset(self.client)
        reset(self.upstream)


class LinkProxy:
    """A TCP proxy on a free loopback port, forwarding to ``target_port``, that can cut, restore and delay."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0  # known once started
        self.accepted = 0  # connections forwarded since the start
        self.refused = 0  # connections reset on arrival, while cut
        self._delay = 0.0
        self._cut = False
        self._links: set[_Link] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # The test's side: these block until the proxy's thread has done the work.

    def start(self, timeout: float = CALL_TIMEOUT) -> "LinkProxy":
        """Listen on a free 127.0.0.1 port, in a thread of its own; return once it accepts connections."""
        if self._thread is not None:
            raise RuntimeError("LinkProxy already started")
        self._thread = threading.Thread(target=self._run, name=f"LinkProxy->{self.target_port}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"LinkProxy to port {self.target_port} did not start within {timeout} s")
        if self._error is not None:
            raise RuntimeError(f"LinkProxy to port {self.target_port} failed to start") from self._error
        return self

    def url_for(self, db: int = 0) -> str:
        """The Redis URL that goes through the proxy."""
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def connections(self) -> int:
        """How many connections are being forwarded right now."""
        return len(self._links)

    def cut(self) -> None:
        """Reset every open connection (RST, both sides), and reset new ones as soon as they arrive."""
        self._call(self._cut_all())

    def restore(self) -> None:
        """Accept and forward new connections again (the ones cut stay cut: their clients must reconnect)."""
        self._call(self._set_cut(False))

    def delay(self, seconds: float) -> None:
        """Hold every chunk ``seconds`` before forwarding it, each way (a round trip gets 2x); 0 to stop."""
        if seconds < 0:
            raise ValueError("a delay cannot be negative")
        self._delay = float(seconds)  # a float assignment is atomic: the proxy's thread reads it per chunk

    def stop(self, timeout: float = CALL_TIMEOUT) -> None:
        """Close the listening socket and every connection, and end the thread."""
        if self._thread is None or self._loop is None:
            return
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop already closed: nothing to stop
                self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"LinkProxy on port {self.port} did not stop within {timeout} s")

    def __enter__(self) -> "LinkProxy":
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run ``coroutine`` on the proxy's loop and wait for it to finish."""
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            coroutine.close()  # never awaited: close it, or Python warns
            raise RuntimeError("LinkProxy is not running")
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("call LinkProxy methods from the test, not from the proxy's own loop")
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(CALL_TIMEOUT)

    # The proxy's side: everything below runs on its own loop, in its own thread.

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as error:  # reported by start(), if it happened before we were ready
            self._error = error
        finally:
            self._ready.set()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        # A large backlog: tests open hundreds of connections at once.
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=1024)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            await self._reset_links()
            await server.wait_closed()
            # Connections still being set up are not links yet: end them too, so no task outlives the loop.
            others = asyncio.all_tasks() - {asyncio.current_task()}
            for task in others:
                task.cancel()
            if others:
                await asyncio.wait(others, timeout=CALL_TIMEOUT)

    async def _set_cut(self, cut: bool) -> None:
        self._cut = cut

    async def _cut_all(self) -> None:
        self._cut = True
        await self._reset_links()

    async def _reset_links(self) -> None:
        """Reset every open link and wait until their sockets are closed."""
        links = list(self._links)
        for link in links:
            link.reset()
        tasks = [link.task for link in links if link.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CALL_TIMEOUT)
        # abort() closes a socket on the loop's next turn: let it, so that the RSTs are out when we return.
        await asyncio.sleep(0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward one client connection, or reset it if the link is cut or the target is unreachable."""
        if self._cut:
            self.refused += 1
            reset(writer)
            return
        try:
            upstream_reader, upstream_writer = await asyncio.wait_for(
                asyncio.open_connection(self.target_host, self.target_port), CONNECT_TIMEOUT
            )
        except OSError:  # refused, reset, or timed out (TimeoutError is an OSError)
            reset(writer)  # as if the target itself refused it
            return
        if self._cut:  # cut while we were connecting
            self.refused += 1
            reset(writer)
            reset(upstream_writer)
            return
        link = _Link(writer, upstream_writer)
        link.task = asyncio.current_task()
        self._links.add(link)
        self.accepted += 1
        clean = True
        try:
            # One task group for both directions: if either side fails, the other side's tasks end too.
            async with asyncio.TaskGroup() as group:
                for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
                    # A reader and a writer of their own per direction, with a pipe between them: a chunk's
                    # delay runs while the next chunks are read, so it is latency added to each chunk, not
                    # delays added up chunk after chunk. The pipe's bound passes back-pressure on.
                    pipe = _Pipe()
                    group.create_task(self._read(source, pipe))
                    group.create_task(self._write(pipe, sink))
        except* (OSError, asyncio.CancelledError):
            clean = False  # one side reset or broke, or we were cut or stopped
        finally:
            self._links.discard(link)
            if clean:
                writer.close()  # both sides finished cleanly: close cleanly
                upstream_writer.close()
            else:
                link.reset()  # pass the failure on to the other side, as an RST

    async def _read(self, reader: asyncio.StreamReader, pipe: _Pipe) -> None:
        """Read one direction until EOF, stamping each chunk with the time it is due on the other side."""
        while data := await reader.read(CHUNK):
            await pipe.put((time.monotonic() + self._delay, data))
        await pipe.put(None)

    async def _write(self, pipe: _Pipe, writer: asyncio.StreamWriter) -> None:
        """Write one direction's chunks, in order, each when it is due; pass the EOF on."""
        while (item := await pipe.get()) is not None:
            due, data = item
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof() and not writer.is_closing():
            writer.write_eof()  # half-close: the other direction goes on until its own EOF
