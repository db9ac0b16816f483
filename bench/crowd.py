"""A crowd of plain WebSocket clients on ws/ that time-stamp every broadcast they get, and the
project's channel layer that sends those broadcasts (used by bench.fanout and python -m bench).
"""

import asyncio
import contextlib
import datetime
import os
import runpy
import time
from collections import Counter

import websockets

from tests.servers import ROOT

# The contract of ws/ (echo.consumers, echo.services): the group every connection joins,
# the event type that pushes to it, and the frame a plain client gets.
GROUP = "group.all"
EVENT_TYPE = "broadcast.message"
PREFIX = "Server broadcast: "
BATCH = 100  # handshakes in flight at once


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
        try:
            async for message in ws:
                now = time.perf_counter()
                if isinstance(message, str) and message.startswith(PREFIX):
                    key = message[len(PREFIX) :]
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


def make_layer(name: str):
    """A new instance of the project's channel layer for CHANNEL_LAYER=``name``.

    project.settings reads CHANNEL_LAYER once, at import: its CHANNEL_LAYERS for the other
    layer comes from running the settings file again with the variable changed.
    """
    from channels.layers import channel_layers
    from django.test import override_settings

    os.environ["CHANNEL_LAYER"] = name
    config = runpy.run_path(str(ROOT / "project" / "settings.py"))["CHANNEL_LAYERS"]
    with override_settings(CHANNEL_LAYERS=config):
        return channel_layers.make_backend("default")


async def close_layer(layer) -> None:
    from channels_redis.pubsub import RedisPubSubChannelLayer

    if isinstance(layer, RedisPubSubChannelLayer):
        await layer.flush()  # closes its connections; there is nothing of ours on the server
    else:
        await layer.close_pools()  # not flush(): that would delete the Daphne's groups


def event(number: int, text: str) -> dict:
    return {
        "type": EVENT_TYPE,
        "id": number,
        "text": text,
        "group": "all",
        "sender": "bench",
        "sent_at": datetime.datetime.now(datetime.UTC).isoformat(),
    }


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
