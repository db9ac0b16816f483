"""Soak: many clients for minutes, echoing, reconnecting and receiving broadcasts; nothing may be lost.

    .venv/bin/python -m bench.soak [--clients 200] [--minutes 5] [--broadcast-every 1]

Starts a private redis-server and a Daphne serving the project. Each echo.json client sends a
message about once a second and checks the reply, drops its connection now and then and
reconnects with ?after=<last broadcast id>, and keeps every broadcast id it saw. Meanwhile the
benchmark broadcasts every second through services.broadcast_send (recorded in the database,
then appended to the push log; the id clients see is its position there). At the end every client must
have every broadcast sent since it first connected (replay fills what a reconnect missed), and
Daphne's memory is compared between the first and the last minute. Exits 1 if anything was lost.
"""

import argparse
import asyncio
import json
import random
import sys
import time

import websockets

from bench.crowd import use_project
from bench.environment import project_env, raise_file_limit
from tests.servers import DaphneServer, RedisServer


class SoakClient:
    def __init__(self, url: str, stop_at: float) -> None:
        self.url, self.stop_at = url, stop_at
        self.first_broadcast: int | None = None  # the newest id when it first connected
        self.seen: set[int] = set()
        self.echoes = self.reconnects = self.errors = 0

    async def run(self) -> None:
        after = None
        while time.monotonic() < self.stop_at:
            url = self.url + (f"?after={after}" if after is not None else "")
            try:
                async with websockets.connect(url, subprotocols=["echo.json"], open_timeout=30) as ws:
                    until = min(self.stop_at, time.monotonic() + random.uniform(5, 40))
                    await self.session(ws, until)
            except (OSError, websockets.ConnectionClosed, TimeoutError):
                self.errors += 1
                await asyncio.sleep(1)
            after = max(self.seen, default=self.first_broadcast)
            self.reconnects += 1

    async def session(self, ws, until: float) -> None:
        next_echo = time.monotonic()
        while time.monotonic() < until:
            if time.monotonic() >= next_echo:
                await ws.send(json.dumps({"type": "echo", "text": "soak"}))
                next_echo = time.monotonic() + random.uniform(0.5, 1.5)
            try:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 0.5))
            except TimeoutError:
                continue
            if frame["type"] == "welcome" and self.first_broadcast is None:
                self.first_broadcast = frame["last_broadcast"]
            elif frame["type"] == "broadcast":
                self.seen.add(frame["id"])
            elif frame["type"] == "echo":
                self.echoes += 1


async def broadcaster(stop_at: float, every: float, sent: list[int]) -> None:
    from asgiref.sync import sync_to_async

    from echo.services import broadcast_send

    while time.monotonic() < stop_at - 5:
        broadcast = await sync_to_async(broadcast_send)(text=f"soak {len(sent)}")
        sent.append(broadcast.position)  # the id clients see: its place in the push log
        await asyncio.sleep(every)


async def soak(url: str, daphne: DaphneServer, clients: int, minutes: float, every: float) -> int:
    stop_at = time.monotonic() + minutes * 60
    crowd = [SoakClient(url, stop_at) for _ in range(clients)]
    sent: list[int] = []
    memory: list[tuple[float, int]] = []

    async def sample() -> None:
        while time.monotonic() < stop_at:
            memory.append((time.monotonic(), daphne.rss()))
            print(f"  {len(sent)} broadcasts, Daphne {memory[-1][1] / 2**20:.0f} MiB", flush=True)
            await asyncio.sleep(15)

    await asyncio.gather(*(client.run() for client in crowd), broadcaster(stop_at, every, sent), sample())
    lost = 0
    for client in crowd:
        start = client.first_broadcast or 0
        expected = {position for position in sent if position > start}
        lost += len(expected - client.seen)
    first = [rss for t, rss in memory if t < memory[0][0] + 60]
    last = [rss for t, rss in memory if t > memory[-1][0] - 60]
    print()
    print(
        f"clients {clients}, {minutes:g} min: {len(sent)} broadcasts, "
        f"{sum(c.echoes for c in crowd):,} echoes, {sum(c.reconnects for c in crowd):,} reconnects, "
        f"{sum(c.errors for c in crowd)} connection errors"
    )
    print(f"broadcast deliveries missing after replay: {lost}")
    print(
        f"Daphne memory: first minute {max(first) / 2**20:.0f} MiB, last minute {max(last) / 2**20:.0f} MiB"
    )
    return 1 if lost else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--broadcast-every", type=float, default=1)
    args = parser.parse_args()
    raise_file_limit()
    redis = RedisServer().start()
    env = project_env(redis.url, LOG_LEVEL="WARNING")
    daphne = DaphneServer(env=env, args=["-v", "0"]).start()
    use_project(env)  # broadcast_send on this run's Redis and database
    try:
        return asyncio.run(
            soak(daphne.ws_url + "/ws/", daphne, args.clients, args.minutes, args.broadcast_every)
        )
    finally:
        daphne.stop()
        redis.stop()


if __name__ == "__main__":
    sys.exit(main())
