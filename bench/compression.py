"""permessage-deflate on the chat stream: bytes on the wire, Daphne CPU per message, memory.

    .venv/bin/python -m bench.compression [--rounds 1] [--clients 20] [--messages 150]
        [--connections 400] [--configs off on on:128 no-context-takeover ...]
    .venv/bin/python -m bench compression ...   (the same)

Each config is WEBSOCKET_COMPRESSION, with ``:N`` for WEBSOCKET_COMPRESSION_MIN_SIZE=N. For each,
one Daphne (as in production, ``-v 0``, DJANGO_DEBUG=0, WEBSOCKET_RATE=0) is started and measured:

- memory: ``--connections`` echo.json clients (the `websockets` client, which offers
  permessage-deflate as browsers do) connect and get their welcome: RSS growth per connection is
  "idle"; then each sends one chat line and gets its echo: the growth per connection is "active"
  (autobahn makes each direction's zlib object on its first message);
- the stream: ``--clients`` echo.json clients exchange what the chat page exchanges, ``--messages``
  rounds of: each sends an echo request of 50-300 characters and gets its reply, then one
  broadcast of 50-300 characters is pushed through the push log to all of them; another client
  connects and leaves every 0.75 s, so that presence counts go out too (PRESENCE_INTERVAL
  0.5). Bytes on the wire are the TCP payload the clients sent and received (TCP_INFO: frames,
  headers and all); CPU is the Daphne process's utime + stime from /proc per message it sent or
  received, steadier than rates on a shared machine.

The text is prose from the README, cut at word boundaries, with a fixed seed. Configs alternate
order round by round; with several rounds the table shows medians.
"""

import argparse
import asyncio
import json
import os
import random
import re
import socket
import statistics
import struct
import time
from pathlib import Path
from typing import NamedTuple

import websockets

from bench.crowd import Pusher, use_project
from bench.environment import project_env, raise_file_limit
from tests.servers import ROOT, DaphneServer, RedisServer

CONFIGS = ["off", "on", "on:128", "no-context-takeover", "no-context-takeover:128"]
SUBPROTOCOL = "echo.json"
# struct tcp_info (linux/tcp.h): tcpi_bytes_acked and tcpi_bytes_received, 64-bit, at byte 120.
TCP_INFO_BYTES = struct.Struct("=QQ")
TCP_INFO_OFFSET = 120
TIMEOUT = 30.0


class Figures(NamedTuple):
    to_clients: int  # bytes on the wire
    from_clients: int
    app_to_clients: int  # bytes of message payload, uncompressed
    app_from_clients: int
    messages: int  # messages Daphne sent or received during the stream
    cpu_us_per_message: float
    idle_bytes_per_connection: float
    active_bytes_per_connection: float


def chat_lines(count: int, seed: int = 14) -> list[str]:
    """Return ``count`` lines of 50-300 characters of English prose (the README's), cut at words."""
    prose = []
    in_code = False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.strip() and not line.startswith(("|", "#", "    ", "-", "<")):
            prose.append(line.strip())
    words = re.sub(r"[`*\[\]]|\(#[^)]*\)", "", " ".join(prose)).split()
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        target = rng.randint(50, 300)
        at = rng.randrange(len(words))
        line = ""
        while len(line) < target:
            line = f"{line} {words[at % len(words)]}".strip()
            at += 1
        lines.append(line[:300])
    return lines


def wire_bytes(ws) -> tuple[int, int]:
    """Return (bytes sent and acknowledged, bytes received) on ``ws``'s TCP connection so far."""
    sock = ws.transport.get_extra_info("socket")
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return TCP_INFO_BYTES.unpack_from(info, TCP_INFO_OFFSET)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ChatClient:
    """One echo.json client: a reader that hands replies and broadcasts to whoever waits."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.received = 0
        self.sent = 0
        self.app_received = 0
        self.app_sent = 0
        self.reply: asyncio.Future | None = None
        self.broadcasts: set[int] = set()
        self.got_broadcast = asyncio.Event()
        self.welcome = asyncio.Event()
        self.reader = asyncio.create_task(self.read())

    @classmethod
    async def open(cls, url: str) -> "ChatClient":
        ws = await websockets.connect(
            url, subprotocols=[SUBPROTOCOL], ping_interval=None, open_timeout=TIMEOUT
        )
        return cls(ws)

    async def read(self) -> None:
        try:
            async for message in self.ws:
                self.received += 1
                self.app_received += len(message.encode())
                data = json.loads(message)
                kind = data["type"]
                if kind == "welcome":
                    self.welcome.set()
                elif kind == "echo" and self.reply is not None and not self.reply.done():
                    self.reply.set_result(data["text"])
                elif kind == "broadcast":
                    self.broadcasts.add(data["id"])
                    self.got_broadcast.set()
        except websockets.ConnectionClosed:
            pass

    async def echo(self, text: str) -> None:
        self.reply = asyncio.get_running_loop().create_future()
        message = json.dumps({"type": "echo", "text": text})
        self.sent += 1
        self.app_sent += len(message.encode())
        await self.ws.send(message)
        await asyncio.wait_for(self.reply, TIMEOUT)

    async def wait_broadcast(self, position: int) -> None:
        while position not in self.broadcasts:
            self.got_broadcast.clear()
            await asyncio.wait_for(self.got_broadcast.wait(), TIMEOUT)

    async def close(self) -> None:
        await self.ws.close()
        await self.reader


async def open_clients(url: str, count: int) -> list[ChatClient]:
    clients = []
    for start in range(0, count, 100):
        clients += await asyncio.gather(*(ChatClient.open(url) for _ in range(min(100, count - start))))
    await asyncio.gather(*(asyncio.wait_for(client.welcome.wait(), TIMEOUT) for client in clients))
    return clients


async def memory(daphne: DaphneServer, url: str, count: int, lines: list[str]) -> tuple[float, float]:
    """Return RSS growth per connection: connected and welcomed; then after one echo each way."""
    before = daphne.rss()
    clients = await open_clients(url, count)
    await asyncio.sleep(1.5)  # presence counts go out every PRESENCE_INTERVAL
    idle = daphne.rss()
    await asyncio.gather(*(client.echo(lines[i % len(lines)]) for i, client in enumerate(clients)))
    await asyncio.sleep(1.5)
    active = daphne.rss()
    await asyncio.gather(*(client.close() for client in clients))
    return (idle - before) / count, (active - before) / count


async def churn_presence(url: str, stop: asyncio.Event) -> None:
    """Connect and leave on plain ws/ (every 0.75 s: not in step with PRESENCE_INTERVAL, 0.5 s, which
    would see the same count each time): the others get presence counts."""
    while not stop.is_set():
        async with websockets.connect(url, compression=None, ping_interval=None):
            await asyncio.sleep(0.35)
        await asyncio.sleep(0.4)


async def stream(daphne: DaphneServer, url: str, clients: int, rounds: int, lines: list[str]) -> dict:
    """Run the chat stream; return wire and payload bytes, messages and Daphne's CPU seconds."""
    pusher = Pusher()
    chat = await open_clients(url, clients)
    stop = asyncio.Event()
    churner = asyncio.create_task(churn_presence(url.rsplit("/ws/", 1)[0] + "/ws/", stop))
    await asyncio.sleep(0.5)
    start = [wire_bytes(client.ws) for client in chat]
    counts = [(c.sent, c.received, c.app_sent, c.app_received) for c in chat]
    cpu = cpu_seconds(daphne.process.pid)
    line = iter(lines * (2 + (rounds * (clients + 1)) // len(lines)))
    for _ in range(rounds):
        await asyncio.gather(*(client.echo(next(line)) for client in chat))
        position = await pusher.send(next(line))
        await asyncio.gather(*(client.wait_broadcast(position) for client in chat))
    used = cpu_seconds(daphne.process.pid) - cpu
    await asyncio.sleep(0.3)  # the last acknowledgements
    end = [wire_bytes(client.ws) for client in chat]
    stop.set()
    await churner
    totals = [sum(now[i] - then[i] for now, then in zip(end, start, strict=True)) for i in (0, 1)]
    done = [
        sum(getattr(c, field) for c in chat) - sum(n[i] for n in counts)
        for i, field in enumerate(("sent", "received", "app_sent", "app_received"))
    ]
    await asyncio.gather(*(client.close() for client in chat))
    return {
        "from_clients": totals[0],
        "to_clients": totals[1],
        "messages": done[0] + done[1],
        "app_from_clients": done[2],
        "app_to_clients": done[3],
        "cpu": used,
    }


def measure(env: dict, config: str, args, lines: list[str]) -> Figures:
    mode, _, min_size = config.partition(":")
    settings = {"WEBSOCKET_COMPRESSION": mode, "WEBSOCKET_COMPRESSION_MIN_SIZE": min_size or "0"}
    daphne = DaphneServer(env={**env, **settings}, args=["-v", "0"]).start()
    url = f"{daphne.ws_url}/ws/"
    try:

        async def run() -> Figures:
            warm = await open_clients(url, 5)  # imports and first-use costs, not counted
            await asyncio.gather(*(client.echo(lines[0]) for client in warm))
            await asyncio.gather(*(client.close() for client in warm))
            idle, active = await memory(daphne, url, args.connections, lines)
            result = await stream(daphne, url, args.clients, args.messages, lines)
            return Figures(
                result["to_clients"],
                result["from_clients"],
                result["app_to_clients"],
                result["app_from_clients"],
                result["messages"],
                result["cpu"] / max(result["messages"], 1) * 1e6,
                idle,
                active,
            )

        return asyncio.run(run())
    finally:
        daphne.stop()


def label(config: str) -> str:
    mode, _, min_size = config.partition(":")
    name = {"on": "context takeover", "no-context-takeover": "no context takeover"}.get(mode, mode)
    return f"{name}, under {min_size} B raw" if min_size else name


def report(figures: dict[str, list[Figures]]) -> None:
    def median(config: str, field: str) -> float:
        return statistics.median(getattr(f, field) for f in figures[config])

    base = next(iter(figures))
    print(
        f"\n{'config':<36}{'to clients KB':>14}{'change':>8}{'from clients KB':>16}{'change':>8}"
        f"{'CPU us/msg':>11}{'change':>8}{'idle KB/conn':>13}{'active KB/conn':>15}"
    )
    for config in figures:
        cells = []
        for field in ("to_clients", "from_clients", "cpu_us_per_message"):
            value, reference = median(config, field), median(base, field)
            shown = f"{value / 1000:,.1f}" if field != "cpu_us_per_message" else f"{value:.1f}"
            cells.append(f"{shown:>{14 if field == 'to_clients' else 16 if field == 'from_clients' else 11}}")
            cells.append(f"{100 * (value / reference - 1):>+7.0f}%")
        idle, active = (
            median(config, "idle_bytes_per_connection"),
            median(config, "active_bytes_per_connection"),
        )
        print(f"{label(config):<36}{''.join(cells)}{idle / 1000:>13.1f}{active / 1000:>15.1f}")
    sample = figures[base][0]
    print(
        f"(per run: {sample.messages:,} messages, {sample.app_to_clients / 1000:,.0f} KB of payload to "
        f"clients and {sample.app_from_clients / 1000:,.0f} KB from them; change: against {label(base)})"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.compression", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--messages", type=int, default=150, help="rounds of the stream")
    parser.add_argument("--connections", type=int, default=400, help="for the memory figures")
    parser.add_argument("--configs", nargs="+", default=CONFIGS)
    args = parser.parse_args(argv)
    for config in args.configs:
        mode, _, min_size = config.partition(":")
        if mode not in ("off", "on", "no-context-takeover") or not (min_size or "0").isdigit():
            parser.error(f"a config is off, on or no-context-takeover, with :N bytes or not; got {config!r}")
    raise_file_limit()
    began = time.monotonic()
    lines = chat_lines(2000)
    redis = RedisServer().start()
    try:
        env = project_env(redis.url, LOG_LEVEL="WARNING", WEBSOCKET_RATE="0", PRESENCE_INTERVAL="0.5")
        use_project(env)  # the pushes go through the push log, on this run's Redis
        figures: dict[str, list[Figures]] = {config: [] for config in args.configs}
        for round_number in range(args.rounds):
            order = args.configs if round_number % 2 == 0 else args.configs[::-1]
            for config in order:
                result = measure(env, config, args, lines)
                figures[config].append(result)
                print(
                    f"round {round_number + 1}/{args.rounds} {label(config):<36} "
                    f"to {result.to_clients / 1000:8,.1f} KB  from {result.from_clients / 1000:8,.1f} KB  "
                    f"{result.cpu_us_per_message:6.1f} us/msg  "
                    f"idle {result.idle_bytes_per_connection / 1000:5.1f}  "
                    f"active {result.active_bytes_per_connection / 1000:5.1f} KB/conn",
                    flush=True,
                )
    finally:
        redis.stop()
    report(figures)
    print(f"took {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
