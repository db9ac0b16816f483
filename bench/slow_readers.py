"""Measure Daphne's memory when clients stop reading: the outbound limit on, and off (Daphne's own way).

    .venv/bin/python -m bench.slow_readers [--clients 100] [--messages 200] [--size 65536]

Starts a private redis-server and, for each setting in turn, a Daphne serving the project;
N raw clients open ws/ and never read again; the benchmark then appends M pushes of SIZE
bytes to the project's push log (echo.pushlog.append, as services.broadcast_send does after
recording one; the Daphne's tail hands each to its clients), and samples Daphne's resident memory
(VmRSS) every 0.1 s until a reading client has them all and the memory settles. Prints the
growth for each setting and how many clients the server closed.
"""

import argparse
import asyncio
import threading
import time

import websockets

from bench.crowd import Pusher, use_project
from bench.environment import project_env, raise_file_limit
from tests.servers import DaphneServer, RedisServer, non_reading_client

SETTINGS = {"limit on (default)": {}, "no limit (Daphne's own)": {"WEBSOCKET_OUTBOUND_LIMIT": "0"}}


async def flood(server: DaphneServer, pusher: Pusher, clients: int, messages: int, size: int) -> dict:
    stuck = [non_reading_client(server.port) for _ in range(clients)]
    peak = baseline = server.rss()
    sampling = True

    def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, server.rss())
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        async with websockets.connect(server.ws_url + "/ws/", max_size=None) as reader:
            await asyncio.sleep(0.3)
            for n in range(messages):
                await pusher.send(f"{n:06d}" + "x" * (size - 6))
                if n % 20 == 19:
                    print(f"  sent {n + 1}/{messages}", flush=True)
            for n in range(messages):
                frame = await asyncio.wait_for(reader.recv(), 60)
                if not frame.startswith(f"Server broadcast: {n:06d}"):
                    raise RuntimeError(f"the reading client got {frame[:40]!r}, expected push {n}")
            await asyncio.sleep(2)  # let buffers settle (or close handshakes time out)
    finally:
        sampling = False
        sampler.join()
    settled = server.rss()
    for sock in stuck:
        sock.close()
    closed = server.log().count("over WEBSOCKET_OUTBOUND_LIMIT")
    return {
        "baseline": baseline,
        "peak": peak,
        "settled": settled,
        "closed": closed,
        "seconds": time.monotonic() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--size", type=int, default=64 * 1024)
    args = parser.parse_args()
    raise_file_limit()
    redis = RedisServer().start()
    base = project_env(redis.url, LOG_LEVEL="WARNING", WEBSOCKET_RATE="0")
    use_project(base)  # pushes go through the project's push log on this Redis
    pusher = Pusher()
    results = {}
    try:
        for name, extra in SETTINGS.items():
            print(
                f"{name}: {args.clients} clients stop reading, {args.messages} x {args.size} bytes each",
                flush=True,
            )
            server = DaphneServer(env={**base, **extra}).start()
            try:
                results[name] = asyncio.run(flood(server, pusher, args.clients, args.messages, args.size))
            finally:
                server.stop()
    finally:
        redis.stop()
    mib = 2**20
    print()
    print(f"{'setting':<26}{'baseline MiB':>13}{'peak MiB':>10}{'growth MiB':>12}{'closed':>8}{'seconds':>9}")
    for name, r in results.items():
        print(
            f"{name:<26}{r['baseline'] / mib:>13.0f}{r['peak'] / mib:>10.0f}"
            f"{(r['peak'] - r['baseline']) / mib:>12.0f}{r['closed']:>8}{r['seconds']:>9.1f}"
        )


if __name__ == "__main__":
    main()
