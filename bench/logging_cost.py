"""Measure what per-message log lines cost: echo throughput on ws/ with LOG_MESSAGES off and on.

    .venv/bin/python -m bench.logging_cost [--seconds 5] [--rounds 3] [--clients 50]

Starts a private redis-server and, for each setting in turn (alternating, so a noisy
machine shows as spread), a Daphne serving the project; 50 closed-loop clients send
32-byte text for a few seconds. Prints messages per second for each round and the median.
"""

import argparse
import asyncio
import statistics
import time

import websockets

from bench.environment import project_env
from tests.servers import DaphneServer, RedisServer


async def closed_loop(url: str, clients: int, seconds: float) -> float:
    """Return the echo rate (messages/s) that ``clients`` connections sustain for ``seconds``."""
    counts = [0] * clients
    payload = "x" * 32

    async def client(n: int, stop_at: float) -> None:
        async with websockets.connect(url, open_timeout=30) as ws:
            while time.monotonic() < stop_at:
                await ws.send(payload)
                await ws.recv()
                counts[n] += 1

    stop_at = time.monotonic() + seconds
    await asyncio.gather(*(client(n, stop_at) for n in range(clients)))
    return sum(counts) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=50)
    args = parser.parse_args()
    redis = RedisServer().start()
    base = project_env(redis.url, LOG_LEVEL="INFO", WEBSOCKET_RATE="0")
    results: dict[str, list[float]] = {"LOG_MESSAGES=0": [], "LOG_MESSAGES=1": []}
    try:
        for round_number in range(args.rounds):
            for name in results:
                env = {**base, "LOG_MESSAGES": name[-1]}
                daphne = DaphneServer(env=env).start()
                try:
                    rate = asyncio.run(closed_loop(daphne.ws_url + "/ws/", args.clients, args.seconds))
                finally:
                    daphne.stop()
                results[name].append(rate)
                print(f"round {round_number + 1}/{args.rounds} {name}: {rate:,.0f} msg/s", flush=True)
    finally:
        redis.stop()
    print()
    print(f"{'setting':<16}{'median msg/s':>14}   rounds")
    for name, rates in results.items():
        print(f"{name:<16}{statistics.median(rates):>14,.0f}   {', '.join(f'{r:,.0f}' for r in rates)}")
    off, on = (statistics.median(r) for r in results.values())
    print(f"per-message lines cost {1 - on / off:.0%} of the throughput")


if __name__ == "__main__":
    main()
