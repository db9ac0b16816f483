"""Daphne CPU time per operation, this checkout against another revision, in one run.

    .venv/bin/python -m bench.cost --baseline REV [--rounds 3] [--seconds 5] [--only echo|churn|idle]

Exports REV into a temporary folder and serves it and this checkout in turn (alternating, round
by round), each under the same load (bench/load.py: echo, 50 clients of 32-byte text on ws/;
churn, 50 workers connecting, echoing once and closing; idle, 5,000 connections held). The
figure is the Daphne process's CPU time (utime + stime from /proc) divided by the operations
done: steadier on a shared, noisy machine than rates, since it does not count time the process
waited for a core; for idle, the growth of its resident memory per connection held. Prints the
medians over rounds and the change; each speed-up is committed with this tool's figure.
"""

import argparse
import os
import statistics
import subprocess
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

from bench.__main__ import idle_memory, load
from bench.environment import project_env, raise_file_limit
from tests.servers import ROOT, DaphneServer, RedisServer


def export(revision: str) -> Path:
    """Write the files of ``revision`` to a new folder (no git state is touched) and return it."""
    folder = Path(tempfile.mkdtemp(prefix="bench-baseline-"))
    archive = subprocess.run(["git", "archive", revision], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def cpu_seconds(pid: int) -> float:
    """Return the CPU time (user + system) process ``pid`` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


IDLE_CONNECTIONS = 5000
UNIT = {"echo": "us of CPU per message", "churn": "us of CPU per connection", "idle": "bytes per connection"}


def measure(tree: Path, env: dict, mode: str, seconds: float) -> float:
    """Serve ``tree`` under one load; return Daphne's CPU microseconds per operation (idle: its
    bytes of memory per connection held)."""
    daphne = DaphneServer(env=env, args=["-v", "0"], cwd=tree).start()
    try:
        if mode == "idle":
            load("echo", f"{daphne.ws_url}/ws/", "--seconds", "1")
            return idle_memory(f"{daphne.ws_url}/ws/", daphne.rss, IDLE_CONNECTIONS, seconds)[
                "per_connection"
            ]
        # A warm-up, so that imports and first-use costs are not counted.
        load("echo", f"{daphne.ws_url}/ws/", "--seconds", "1")
        before = cpu_seconds(daphne.process.pid)
        result = load(mode, f"{daphne.ws_url}/ws/", "--seconds", str(seconds))
        used = cpu_seconds(daphne.process.pid) - before
    finally:
        daphne.stop()
    done = result["messages"] if mode == "echo" else result["connections"]
    return used / max(done, 1) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", required=True, help="the git revision to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--only", choices=["echo", "churn", "idle"])
    args = parser.parse_args()
    raise_file_limit()
    trees = {"baseline": export(args.baseline), "this": ROOT}
    modes = [args.only] if args.only else ["echo", "churn"]
    redis = RedisServer().start()
    try:
        env = project_env(redis.url, WEBSOCKET_RATE="0")
        figures = {(name, mode): [] for name in trees for mode in modes}
        for round_number in range(args.rounds):
            for mode in modes:
                order = list(trees) if round_number % 2 == 0 else list(trees)[::-1]
                for name in order:
                    figures[name, mode].append(measure(trees[name], env, mode, args.seconds))
                    figure = figures[name, mode][-1]
                    print(f"round {round_number + 1} {mode:<5} {name:<8} {figure:8.1f} {UNIT[mode]}")
    finally:
        redis.stop()
    print(f"\nmedians over {args.rounds} rounds (baseline {args.baseline})")
    for mode in modes:
        base = statistics.median(figures["baseline", mode])
        this = statistics.median(figures["this", mode])
        change = 100 * (this / base - 1)
        print(f"{mode:<6} baseline {base:8.1f}  this {this:8.1f}  change {change:+6.1f}%  ({UNIT[mode]})")


if __name__ == "__main__":
    main()
