"""Pauses with many connections: a separate client's echo round trip while one Daphne takes and holds them.

    .venv/bin/python -m bench pauses [--connections 15000] [--hold 60] [--baseline REV]

Starts a private redis-server and one Daphne (production settings, backlog 4096), then a probe:
one client that sends a message on ws/ every 20 ms and times each echo. Meanwhile bench/load.py
opens ``--connections`` idle connections (in batches of 200) and holds them ``--hold`` seconds.
Prints the probe's round trips while the connections arrive, while they are held and while the
load closes them all at once (p50, p99, longest), and the process's garbage collections by how
long each paused it (its /metrics, echo_gc_pause_seconds). With --baseline, the same run first
serves revision REV (bench/cost.py exports it), so that both lines come from one run.
"""

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import websockets

from bench.cost import export
from bench.crowd import percentile
from bench.environment import project_env, raise_file_limit
from tests.servers import ROOT, DaphneServer, RedisServer

PROBE_INTERVAL = 0.02


async def probe(url: str, samples: list[tuple[float, float]], stop: threading.Event) -> None:
    """Send a message every PROBE_INTERVAL and record (sent at, round trip) until ``stop``."""
    async with websockets.connect(url, open_timeout=30) as client:
        while not stop.is_set():
            sent = time.monotonic()
            await client.send("probe")
            await asyncio.wait_for(client.recv(), 30)
            samples.append((sent, time.monotonic() - sent))
            await asyncio.sleep(max(0.0, PROBE_INTERVAL - (time.monotonic() - sent)))


def gc_pauses(server: DaphneServer) -> dict:
    """Return the server's collections: how many, and how many paused it for over 50 and 100 ms."""
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=10) as response:
        text = response.read().decode()

    def total(pattern: str) -> float:
        return sum(float(value) for value in re.findall(pattern, text, re.M))

    count = total(r'^echo_gc_pause_seconds_count\{generation="\d"\} (\S+)$')
    under = {
        bound: total(rf'^echo_gc_pause_seconds_bucket\{{generation="\d",le="{bound}"\}} (\S+)$')
        for bound in ("0.05", "0.1")
    }
    full = total(r'^echo_gc_pause_seconds_count\{generation="2"\} (\S+)$')
    return {
        "collections": count,
        "full": full,
        "over_50ms": count - under["0.05"],
        "over_100ms": count - under["0.1"],
    }


def run(tree: Path, connections: int, hold: float) -> dict:
    """Serve ``tree``, take and hold ``connections`` with the probe running; return the figures."""
    redis = RedisServer().start()
    daphne = None
    try:
        env = project_env(redis.url, WEBSOCKET_RATE="0", METRICS_PUBLIC="1")
        daphne = DaphneServer(env=env, args=["-v", "0"], cwd=tree)
        daphne.backlog = 4096
        daphne.start()
        samples: list[tuple[float, float]] = []
        stop = threading.Event()
        prober = threading.Thread(target=asyncio.run, args=(probe(f"{daphne.ws_url}/ws/", samples, stop),))
        prober.start()
        time.sleep(1)
        command = [sys.executable, "-m", "bench.load", "idle", f"{daphne.ws_url}/ws/"]
        command += ["--connections", str(connections), "--hold", str(hold)]
        flood_began = time.monotonic()
        holding_since = None
        with subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        ) as load:
            for line in load.stdout:
                if line.startswith("OPEN "):
                    holding_since = time.monotonic()
                    print(
                        f"  {line.split()[1]} open after {holding_since - flood_began:.0f} s; holding",
                        flush=True,
                    )
        closed_at = time.monotonic()
        stop.set()
        prober.join(60)
        rss = daphne.rss()
        pauses = gc_pauses(daphne)
    finally:
        if daphne is not None:
            daphne.stop()
        redis.stop()
    holding_since = holding_since or closed_at
    # The load holds the connections ``hold`` seconds after its OPEN line, then closes them all at
    # once: that burst (15,000 sockets closed in about a second) is reported on its own.
    held_until = min(holding_since + hold, closed_at)
    flood = [rtt for sent, rtt in samples if flood_began <= sent < holding_since]
    held = [rtt for sent, rtt in samples if holding_since <= sent < held_until]
    closing = [rtt for sent, rtt in samples if held_until <= sent < closed_at]
    return {"flood": flood, "held": held, "closing": closing, "rss": rss, **pauses}


def describe(rtts: list[float]) -> str:
    if not rtts:
        return "no samples"
    rtts = sorted(rtts)
    p50, p99 = statistics.median(rtts) * 1000, percentile(rtts, 99) * 1000
    return f"p50 {p50:6.1f} ms  p99 {p99:7.1f} ms  longest {rtts[-1] * 1000:7.1f} ms  ({len(rtts)} samples)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=15_000)
    parser.add_argument("--hold", type=float, default=60)
    parser.add_argument("--baseline", help="a git revision to measure first, in the same run")
    args = parser.parse_args(argv)
    raise_file_limit()
    trees = ({"baseline": export(args.baseline)} if args.baseline else {}) | {"this": ROOT}
    for name, tree in trees.items():
        print(f"{name}: {args.connections:,} connections, held {args.hold:.0f} s", flush=True)
        figures = run(tree, args.connections, args.hold)
        print(f"  while connecting: {describe(figures['flood'])}")
        print(f"  while held:       {describe(figures['held'])}")
        print(f"  while all close:  {describe(figures['closing'])}")
        if not figures["collections"]:
            print("  collections: not reported (this revision has no echo_gc_pause_seconds)", flush=True)
            continue
        print(
            f"  collections: {figures['collections']:.0f} ({figures['full']:.0f} full), "
            f"{figures['over_50ms']:.0f} over 50 ms, {figures['over_100ms']:.0f} over 100 ms; "
            f"RSS {figures['rss'] / 2**20:.0f} MiB",
            flush=True,
        )


if __name__ == "__main__":
    main()
