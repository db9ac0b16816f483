"""The benchmark: the project under Daphne against a plain `websockets` echo server, in one run.

    .venv/bin/python -m bench [--rounds 3] [--seconds 5] [--idle 10000] [--hold 60] [--skip idle]
    .venv/bin/python -m bench compression [...]   (permessage-deflate: bench/compression.py)
    .venv/bin/python -m bench pauses [...]        (15,000 connections held: bench/pauses.py)

Starts a private redis-server and four servers: the project under Daphne (as in production:
`daphne -v 0`, DJANGO_DEBUG=0, and WEBSOCKET_RATE=0 so that the load is not rate-limited); the
stock stack (bench/stock_asgi.py: the Channels tutorial's consumer under stock Daphne); bare
Daphne (bench/bare_asgi.py: stock Daphne with a plain ASGI app, no Django or Channels, the
ceiling for any app under stock Daphne); and the reference (bench/reference_server.py: a plain
`websockets` server). Drives them from separate load processes (bench/load.py: picows on
uvloop), alternating the servers round by round so that a noisy machine shows as spread.
Measures echo (50 closed-loop clients, 32-byte text) and connection churn (connect, one echo,
close; 50 workers) on each; broadcast fan-out to 1,000 clients through the push log
(bench/fanout.py: pushes appended with echo.pushlog.append, as broadcast_send does); memory per
idle connection with 10,000 held for a minute; and echo through nginx (deploy/nginx.conf) in
front of one Daphne, then two. Prints a table and writes a PNG chart of the echo round-trip
distribution to artifacts/bench.png. "x stock" is the project over the stock stack, "ratio"
the project over the reference.
"""

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from bench.crowd import percentile, use_project
from bench.environment import project_env, raise_file_limit
from tests.servers import ROOT, DaphneServer, RedisServer, free_port, wait_for_port

CHART = ROOT / "artifacts" / "bench.png"


class Row(NamedTuple):
    """One line of the result table."""

    figure: str
    project: str
    reference: str = ""
    ratio: str = ""  # project / reference, or a note
    stock: str = ""
    x_stock: str = ""  # project / stock
    bare: str = ""  # bare Daphne


def load(mode: str, url: str, *options: str, on_line=None) -> dict:
    """Run bench/load.py in a process of its own and return its JSON result (one retry)."""
    for attempt in (1, 2):
        with tempfile.TemporaryDirectory(prefix="bench-load-") as folder:
            result_file = Path(folder) / "result.json"
            command = [sys.executable, "-m", "bench.load", mode, url, *options, "--result", str(result_file)]
            process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
            for line in process.stdout:
                if on_line is not None:
                    on_line(line.strip())
            process.wait()
            try:
                return json.loads(result_file.read_text())
            except (OSError, json.JSONDecodeError) as error:
                print(
                    f"  load {mode} {url}: exit {process.returncode}, no result ({error}); attempt {attempt}",
                    flush=True,
                )
    raise RuntimeError(f"{' '.join(command)} failed twice")


class Reference:
    """bench/reference_server.py in a subprocess."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.reference_server", str(self.port)],
            cwd=ROOT,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, self.process, "the reference server")

    def rss(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) * 1024

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def idle_memory(url: str, rss, connections: int, hold: float) -> dict:
    """Hold ``connections`` open for ``hold`` seconds; return bytes per connection and what was dropped."""
    before = rss()
    measured = {}

    def on_line(line: str) -> None:
        if line.startswith("OPEN "):
            time.sleep(2)  # let the server settle after the last handshake
            measured["after"] = rss()
            print(f"  {line.split()[1]} connections open; holding them {hold:.0f} s", flush=True)

    result = load("idle", url, "--connections", str(connections), "--hold", str(hold), on_line=on_line)
    opened = max(result["opened"], 1)
    return {**result, "per_connection": (measured.get("after", before) - before) / opened}


def main() -> None:
    if sys.argv[1:2] == ["compression"]:
        from bench import compression

        compression.main(sys.argv[2:])
        return
    if sys.argv[1:2] == ["pauses"]:
        from bench import pauses

        pauses.main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--fanout-clients", type=int, default=1000)
    parser.add_argument("--broadcasts", type=int, default=20)
    parser.add_argument("--idle", type=int, default=10_000)
    parser.add_argument("--hold", type=float, default=60)
    parser.add_argument(
        "--skip", action="append", default=[], choices=["echo", "churn", "fanout", "idle", "scale"]
    )
    args = parser.parse_args()
    raise_file_limit()
    began = time.monotonic()

    redis = RedisServer().start()
    env = project_env(redis.url, LOG_LEVEL="WARNING", WEBSOCKET_RATE="0")
    daphne = DaphneServer(env=env, args=["-v", "0"]).start()
    stock = DaphneServer(
        env={"REDIS_URL": redis.url, "DJANGO_SETTINGS_MODULE": "bench.stock_settings"},
        args=["-v", "0"],
        app="bench.stock_asgi:application",
    ).start()
    bare = DaphneServer(env={}, args=["-v", "0"], app="bench.bare_asgi:application").start()
    reference = Reference()
    targets = {
        "ws/": daphne.ws_url + "/ws/",
        "ws/raw/": daphne.ws_url + "/ws/raw/",
        "stock": stock.ws_url + "/ws/",
        "bare Daphne": bare.ws_url + "/ws/",
        "reference": reference.url,
    }
    echo = {name: {"rates": [], "rtts": []} for name in targets}
    churn = {name: [] for name in ("ws/", "stock", "bare Daphne", "reference")}
    rows: list[Row] = []
    try:
        for round_number in range(1, args.rounds + 1):
            if "echo" not in args.skip:
                for name, url in targets.items():
                    result = load("echo", url, "--clients", str(args.clients), "--seconds", str(args.seconds))
                    echo[name]["rates"].append(result["rate"])
                    echo[name]["rtts"].extend(result["rtt_ms"])
                    print(
                        f"round {round_number}/{args.rounds} echo {name:<10} {result['rate']:>9,.0f} msg/s",
                        flush=True,
                    )
            if "churn" not in args.skip:
                for name in churn:
                    url = targets[name]
                    result = load(
                        "churn", url, "--workers", str(args.clients), "--seconds", str(args.seconds)
                    )
                    churn[name].append(result["rate"])
                    errors = (
                        f" ({result['errors']} errors: {result['first_error']})" if result["errors"] else ""
                    )
                    print(
                        f"round {round_number}/{args.rounds} churn {name:<9} "
                        f"{result['rate']:>9,.0f} conn/s{errors}",
                        flush=True,
                    )

        if "echo" not in args.skip:
            rate = {name: statistics.median(data["rates"]) for name, data in echo.items()}

            def p50_p99(name: str) -> str:
                rtts = echo[name]["rtts"]
                return f"{percentile(rtts, 50):.2f} / {percentile(rtts, 99):.2f}"

            for name in ("ws/", "ws/raw/"):
                rows.append(
                    Row(
                        f"echo {name} msg/s (median of {args.rounds})",
                        f"{rate[name]:,.0f}",
                        f"{rate['reference']:,.0f}",
                        f"{rate[name] / rate['reference']:.2f}",
                        f"{rate['stock']:,.0f}",
                        f"{rate[name] / rate['stock']:.2f}",
                        f"{rate['bare Daphne']:,.0f}",
                    )
                )
                rows.append(
                    Row(
                        f"echo {name} round trip p50 / p99 ms",
                        p50_p99(name),
                        p50_p99("reference"),
                        stock=p50_p99("stock"),
                        bare=p50_p99("bare Daphne"),
                    )
                )
            chart(echo)
        if "churn" not in args.skip:
            ours, theirs, stocks, bares = (
                statistics.median(churn[name]) for name in ("ws/", "reference", "stock", "bare Daphne")
            )
            rows.append(
                Row(
                    f"churn ws/ connections/s (median of {args.rounds})",
                    f"{ours:,.0f}",
                    f"{theirs:,.0f}",
                    f"{ours / theirs:.2f}",
                    f"{stocks:,.0f}",
                    f"{ours / stocks:.2f}",
                    f"{bares:,.0f}",
                )
            )
        if "fanout" not in args.skip:
            use_project(env)  # the pushes go through the project's push log, on this run's Redis
            from bench.fanout import fanout

            print(f"fan-out: {args.fanout_clients} clients, {args.broadcasts} pushes", flush=True)
            result = asyncio.run(fanout(targets["ws/"], args.fanout_clients, args.broadcasts, "bench"))
            rows.append(
                Row(
                    f"fan-out to {args.fanout_clients}: first→last p50 / p99 ms",
                    f"{percentile(result.first_to_last, 50):.0f} / "
                    f"{percentile(result.first_to_last, 99):.0f}",
                    "",
                    f"lost {result.lost}, dup {result.duplicates}",
                )
            )
            rows.append(
                Row(
                    "fan-out: send→last p50 / p99 ms",
                    f"{percentile(result.send_to_last, 50):.0f} / {percentile(result.send_to_last, 99):.0f}",
                    "",
                    "",
                )
            )
        if "idle" not in args.skip:
            print(f"idle: {args.idle} connections on the project", flush=True)
            ours = idle_memory(targets["ws/"], daphne.rss, args.idle, args.hold)
            print(f"idle: {args.idle} connections on the reference", flush=True)
            theirs = idle_memory(targets["reference"], reference.rss, args.idle, args.hold)
            rows.append(
                Row(
                    f"idle: KB per connection ({args.idle:,} held {args.hold:.0f} s)",
                    f"{ours['per_connection'] / 1000:.1f}",
                    f"{theirs['per_connection'] / 1000:.1f}",
                    f"{ours['per_connection'] / max(theirs['per_connection'], 1):.2f}",
                )
            )
            rows.append(
                Row(
                    "idle: opened / failed / dropped",
                    f"{ours['opened']} / {ours['failed']} / {ours['dropped']}",
                    f"{theirs['opened']} / {theirs['failed']} / {theirs['dropped']}",
                    "",
                )
            )
        if "scale" not in args.skip:
            rows.extend(scale(daphne, env, args))
    finally:
        reference.stop()
        stock.stop()
        bare.stop()
        daphne.stop()
        redis.stop()

    print()
    width = max(len(row.figure) for row in rows) + 2 if rows else 10
    print(
        f"{'figure':<{width}}{'project':>16}{'stock':>16}{'x stock':>9}{'bare Daphne':>16}"
        f"{'reference':>16}{'ratio':>10}"
    )
    for row in rows:
        print(
            f"{row.figure:<{width}}{row.project:>16}{row.stock:>16}{row.x_stock:>9}{row.bare:>16}"
            f"{row.reference:>16}{row.ratio:>10}"
        )
    print(f"took {time.monotonic() - began:.0f} s")


def cpu_seconds(pids: list[int]) -> float:
    """Return the CPU time the processes ``pids`` and their children still running have used."""
    ticks = os.sysconf("SC_CLK_TCK")
    stats = {}
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = path.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        stats[int(path.parent.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)
    return sum(used for pid, (parent, used) in stats.items() if pid in pids or parent in pids)


def scale(daphne: DaphneServer, env: dict, args) -> list[Row]:
    """Echo msg/s through nginx in front of one Daphne, then of two; return the table rows.

    Also where the CPU went during the load (% of one core: Daphnes, nginx, load generator),
    since on a small machine the proxy and the load share the cores with the Daphnes.
    """
    from deploy.cluster import start_nginx

    second = DaphneServer(env=env, args=["-v", "0"]).start()
    proxies = {}
    try:
        for name, ports in (("1 process", [daphne.port]), ("2 processes", [daphne.port, second.port])):
            port = free_port()
            proxies[name] = (port, start_nginx(listen=port, upstream_ports=ports))
            wait_for_port(port, proxies[name][1], "nginx")
        rates: dict[str, list[float]] = {name: [] for name in proxies}
        cpu = {name: {"Daphnes": 0.0, "nginx": 0.0, "load": 0.0, "wall": 0.0} for name in proxies}
        daphnes = [daphne.process.pid, second.process.pid]
        for round_number in range(1, args.rounds + 1):
            for name, (port, nginx) in proxies.items():
                url = f"ws://127.0.0.1:{port}/ws/"
                before = (cpu_seconds(daphnes), cpu_seconds([nginx.pid]), children_cpu(), time.monotonic())
                result = load("echo", url, "--clients", str(args.clients * 2), "--seconds", str(args.seconds))
                after = (cpu_seconds(daphnes), cpu_seconds([nginx.pid]), children_cpu(), time.monotonic())
                for key, start, end in zip(cpu[name], before, after, strict=True):
                    cpu[name][key] += end - start
                rates[name].append(result["rate"])
                print(
                    f"round {round_number}/{args.rounds} nginx + {name:<12} {result['rate']:>9,.0f} msg/s",
                    flush=True,
                )
    finally:
        for _, nginx in proxies.values():
            nginx.terminate()
            nginx.wait(timeout=10)
        second.stop()
    one, two = (statistics.median(rates[name]) for name in proxies)

    def per_core(name: str) -> float:
        return sum(rates[name]) * args.seconds / max(cpu[name]["Daphnes"], 0.001)

    def shares(name: str) -> str:
        used = cpu[name]
        return " / ".join(f"{100 * used[key] / used['wall']:.0f}" for key in ("Daphnes", "nginx", "load"))

    return [
        Row("echo ws/ through nginx, 1 Daphne msg/s", f"{one:,.0f}"),
        Row(
            "echo ws/ through nginx, 2 Daphnes msg/s (ratio: 2 vs 1)", f"{two:,.0f}", ratio=f"{two / one:.2f}"
        ),
        Row("CPU % Daphnes / nginx / load, 1 Daphne", shares("1 process")),
        Row("CPU % Daphnes / nginx / load, 2 Daphnes", shares("2 processes")),
        Row(
            "msg/s per core of Daphne CPU, 1 / 2 Daphnes (ratio: 2 vs 1)",
            f"{per_core('1 process'):,.0f} / {per_core('2 processes'):,.0f}",
            ratio=f"{per_core('2 processes') / per_core('1 process'):.2f}",
        ),
    ]


def children_cpu() -> float:
    """Return the CPU time of this process's finished children (the load processes)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def chart(echo: dict) -> None:
    """Write the distribution of echo round trips, one line per server, to CHART."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5))
    for name, data in echo.items():
        ordered = sorted(data["rtts"])
        if ordered:
            axes.plot(ordered, [i / len(ordered) for i in range(len(ordered))], label=name)
    axes.set_xscale("log")
    axes.set_xlabel("round trip, ms (log scale)")
    axes.set_ylabel("fraction of messages")
    axes.set_title("Echo round trips, 50 closed-loop clients, 32-byte text")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    CHART.parent.mkdir(exist_ok=True)
    figure.savefig(CHART)
    print(f"chart written to {CHART.relative_to(ROOT)}", flush=True)


if __name__ == "__main__":
    main()
