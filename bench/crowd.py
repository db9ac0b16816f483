"""A crowd of plain WebSocket clients on ws/ that time-stamp every broadcast they get, and what
pushes those broadcasts through the project's push log (used by bench.fanout, bench.slow_readers
and python -m bench).

Project code is imported only inside the helpers that need it: call ``use_project(env)`` first,
which points Django at the benchmark's Redis and database (the environment bench.environment's
``project_env`` returns) and sets it up.
"""

import asyncio
import contextlib
import datetime
import os
import time
from collections import Counter

import websockets

# The contract of ws/ (echo.consumers, echo.services): the group every connection is in, and
# the frame a plain client gets for a push.
GROUP = "all"
PREFIX = "Server broadcast: "
BATCH = 100  # handshakes in flight at once


def use_project(env: dict[str, str]) -> None:
    """Configure this process's Django for the project on ``env`` (its REDIS_URL, DATABASE_URL...).

    Django reads its settings once per process: the first call decides for the process.
    """
    os.environ.update(env, DJANGO_SETTINGS_MODULE="project.settings")
    import django

    django.setup()


def push(text: str, group: str = GROUP) -> dict:
    """Return what the push log carries for a broadcast of ``text`` (echo.models.Broadcast.push)."""
    now = datetime.datetime.now(datetime.UTC).isoformat()
    return {"group": group, "text": text, "sender": "bench", "sent_at": now}


class Pusher:
    """Appends pushes to the push log as ``services.broadcast_send`` does, without the database row.

    ``floor`` keeps positions above every one this process has seen: the push log's counter
    lives in Redis, and a Redis that lost its data would start again from 1, under the positions
    the Daphnes have delivered (they would skip those pushes as already delivered).
    broadcast_send takes its floor from the database; a benchmark without rows keeps its own.
    """

    def __init__(self, floor: int = 0) -> None:
        self.floor = floor

    def saw(self, position: int | None) -> None:
        """Raise the floor to ``position`` (one sent another way, e.g. by broadcast_send)."""
        if position is not None:
            self.floor = max(self.floor, position)

    def append(self, text: str, group: str = GROUP) -> int:
        """Append one push (blocking: from async code, run it in a thread); return its position."""
        from echo import pushlog

        position = pushlog.append(push(text, group), floor=self.floor)
        self.saw(position)
        return position

    async def send(self, text: str, group: str = GROUP) -> int:
        """Append one push from async code, in a thread (redis-py's sync client blocks)."""
        return await asyncio.to_thread(self.append, text, group)


class Clients:
    """Plain WebSocket clients on ws/, each with a reader that time-stamps every broadcast it gets."""

    def __init__(self) -> None:
        self.connections: list = []
        self.readers: list[asyncio.Task] = []
        self.connect_errors: list[str] = []
        self.arrivals: dict[str, list[float]] = {}
        self.expected: dict[str, int] = {}
        self.done: dict[str, asyncio.Event] = {}
        # (perf_counter, close code, reason) of every close we did not ask for: the server's.
        self.closes: list[tuple[float, int | None, str | None]] = []
        # Broadcasts a client got a second time (the push log delivers each once).
        self.duplicates = 0
        self.closing = False

    @property
    def still_open(self) -> int:
        return len(self.connections) - len(self.closes)

    async def open(self, url: str, count: int) -> None:
        for start in range(0, count, BATCH):
            results = await asyncio.gather(
                *(self._connect(url) for _ in range(min(BATCH, count - start))), return_exceptions=True
            )
            for result in results:
                if isinstance(result, BaseException):
                    self.connect_errors.append(f"{type(result).__name__}: {result}")
                else:
                    self.connections.append(result)
                    self.readers.append(asyncio.create_task(self._read(result)))

    @staticmethod
    async def _connect(url: str):
        # No client pings: every close this benchmark sees comes from the server.
        return await websockets.connect(url, open_timeout=30, ping_interval=None, close_timeout=5)

    async def _read(self, ws) -> None:
        seen: set[str] = set()
        try:
            async for message in ws:
                now = time.perf_counter()
                if isinstance(message, str) and message.startswith(PREFIX):
                    key = message[len(PREFIX) :]
                    if key in seen:
                        self.duplicates += 1
                        continue
                    seen.add(key)
                    times = self.arrivals.get(key)
                    if times is not None:
                        times.append(now)
                        if len(times) >= self.expected[key]:
                            self.done[key].set()
        except websockets.ConnectionClosed:
            pass
        if not self.closing:
            self.closes.append((time.perf_counter(), ws.close_code, ws.close_reason))

    def expect(self, key: str, count: int) -> None:
        """Start collecting arrivals of the broadcast whose text is ``key``."""
        self.arrivals[key], self.expected[key], self.done[key] = [], count, asyncio.Event()
        if count <= 0:
            self.done[key].set()

    async def collect(self, key: str, deadline: float) -> list[float]:
        """Return the arrival times of ``key`` once all expected clients have it, or at ``deadline``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done[key].wait(), max(0.0, deadline - time.perf_counter()))
        del self.expected[key], self.done[key]
        return self.arrivals.pop(key)

    async def close(self) -> None:
        self.closing = True
        try:
            await asyncio.wait_for(
                asyncio.gather(*(ws.close() for ws in self.connections), return_exceptions=True), 30
            )
        except TimeoutError:
            for ws in self.connections:
                ws.transport.abort()
        for reader in self.readers:
            reader.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile, interpolated between the two nearest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def close_summary(closes: list[tuple[float, int | None, str | None]]) -> str:
    if not closes:
        return "0"
    codes = Counter(code for _, code, _ in closes)
    return f"{len(closes)} (" + ", ".join(f"{code}x{n}" for code, n in sorted(codes.items())) + ")"
