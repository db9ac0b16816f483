"""Measure broadcast fan-out on ws/ with the core and the pub/sub channel layer, and a Redis restart.

    .venv/bin/python -m bench.fanout [--clients 1000] [--broadcasts 20] [--rounds 2]

Starts a private redis-server and, for each layer in turn (alternating, so a noisy machine
shows as spread), a Daphne serving the project with CHANNEL_LAYER=core or pubsub and
LOG_LEVEL=WARNING. N plain clients connect to ws/ (in batches of 100). With the project's own
channel layer the benchmark sends warm-up broadcasts (not counted) until one reaches every
client (a check that all are in the group before measuring), then K
broadcasts one after another, each to the group "group.all".
Every client time-stamps the frame "Server broadcast: TEXT" when it arrives; a broadcast that
has not reached every client within 10 s counts the missing ones as lost. Per broadcast:
send -> last client, and first client -> last client, in ms; p50 and p99 over the broadcasts.

Then, on a fresh Daphne with 100 clients, the redis-server is stopped and started again on
the same port (it keeps nothing): 5 s later one broadcast is sent, and the clients that get
it within 5 s are counted, as are the clients the server closed during the outage.
The load generator shares the machine with Daphne and Redis: times include its own work.
"""

import argparse
import asyncio
import os
import re
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

from bench.crowd import GROUP, Clients, close_layer, close_summary, event, make_layer, percentile
from bench.environment import project_env, raise_file_limit
from tests.servers import DaphneServer, RedisServer

LAYERS = ("core", "pubsub")
DELIVERY_TIMEOUT = 10.0  # s for a broadcast to reach every client
SEND_TIMEOUT = 10.0  # s for group_send itself
BARRIER_ATTEMPT = 3.0  # s a warm-up broadcast may take
BARRIER_TIMEOUT = 30.0  # s of warm-up broadcasts before measuring anyway
TEARDOWN_SETTLE = 2.0  # s between closing the clients and stopping the Daphne
RESTART_CLIENTS = 100
RESTART_SETTLE = 5.0  # s between the new redis-server and the broadcast
RESTART_TIMEOUT = 5.0  # s for that broadcast to arrive
# A log line at WARNING or worse: "<time> LEVEL logger message" (project.settings' format).
LOG_LINE = re.compile(r"^.*? (?P<level>CRITICAL|ERROR|WARNING) +(?P<logger>\S+) (?P<message>.*)$", re.M)


@dataclass
class FanoutResult:
    send_to_last: list[float] = field(default_factory=list)  # ms, one per broadcast
    first_to_last: list[float] = field(default_factory=list)
    send_call: list[float] = field(default_factory=list)  # ms the group_send call itself took
    lost: int = 0
    connected: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class RestartResult:
    clients: int = 0
    received: int = 0
    still_open: int = 0
    closed_in_outage: list = field(default_factory=list)
    closed_after: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


async def send(layer, number: int, key: str) -> float:
    """group_send one broadcast; return the perf_counter at which it was sent."""
    sent = time.perf_counter()
    await asyncio.wait_for(layer.group_send(GROUP, event(number, key)), SEND_TIMEOUT)
    return sent


async def join_barrier(crowd: Clients, layer, tag: str) -> tuple[int, int, int, float]:
    """Send warm-up broadcasts until one reaches every open client: all have joined the group.

    The consumer joins its groups before it accepts, so the first warm-up should reach every
    client; this checks it. Returns how many clients the first warm-up reached, the most one
    reached, the attempts made, and the seconds they took.
    """
    started = time.perf_counter()
    first = best = attempts = 0
    while time.perf_counter() - started < BARRIER_TIMEOUT:
        attempts += 1
        key = f"{tag}{attempts}"
        crowd.expect(key, crowd.still_open)
        sent = await send(layer, -attempts, key)
        reached = len(await crowd.collect(key, sent + BARRIER_ATTEMPT))
        first = reached if attempts == 1 else first
        best = max(best, reached)
        if best >= crowd.still_open:
            break
    return first, best, attempts, time.perf_counter() - started


async def fanout(layer_name: str, url: str, clients: int, broadcasts: int, tag: str) -> FanoutResult:
    result = FanoutResult()
    crowd = Clients()
    layer = make_layer(layer_name)
    try:
        started = time.perf_counter()
        await crowd.open(url, clients)
        result.connected = len(crowd.connections)
        print(
            f"  {layer_name}: {result.connected}/{clients} clients connected "
            f"in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        if crowd.connect_errors:
            note = f"{len(crowd.connect_errors)} handshakes failed, e.g. {crowd.connect_errors[0]}"
            result.notes.append(note)
            print(f"  {layer_name}: {note}", flush=True)
        first, reached, attempts, took = await join_barrier(crowd, layer, f"{tag}-warmup")
        print(
            f"  {layer_name}: first warm-up broadcast, sent right after the last handshake, reached "
            f"{first}/{result.connected}; {reached}/{result.connected} after {attempts} in {took:.1f} s",
            flush=True,
        )
        if reached < result.connected:
            result.notes.append(f"warm-up broadcasts never reached more than {reached}/{result.connected}")
        for number in range(broadcasts):
            key = f"{tag}-{number}"
            crowd.expect(key, result.connected)
            sent = time.perf_counter()
            try:
                await send(layer, number, key)
            except Exception as error:
                result.notes.append(f"broadcast {number}: group_send failed: {type(error).__name__}: {error}")
            result.send_call.append((time.perf_counter() - sent) * 1000)
            times = await crowd.collect(key, sent + DELIVERY_TIMEOUT)
            result.lost += result.connected - len(times)
            if times:
                result.send_to_last.append((max(times) - sent) * 1000)
                result.first_to_last.append((max(times) - min(times)) * 1000)
        if crowd.closes:
            result.notes.append(f"server closed {close_summary(crowd.closes)} clients during the fan-out")
    finally:
        await crowd.close()
        await close_layer(layer)
        # Let the server finish its disconnects (pubsub unsubscribes them one by one) before
        # it is stopped: a SIGTERM in the middle logs a CancelledError per unfinished one.
        await asyncio.sleep(TEARDOWN_SETTLE)
    return result


async def after_restart(layer_name: str, url: str, redis: RedisServer, tag: str) -> RestartResult:
    result = RestartResult()
    crowd = Clients()
    layer = make_layer(layer_name)
    try:
        await crowd.open(url, RESTART_CLIENTS)
        result.clients = len(crowd.connections)
        if crowd.connect_errors:
            result.notes.append(f"{len(crowd.connect_errors)} handshakes failed")
        _, before, _, _ = await join_barrier(crowd, layer, f"{tag}-before")
        await close_layer(layer)
        layer = None

        stopped = time.perf_counter()

        def restart() -> None:
            redis.stop()
            redis.start()

        await asyncio.to_thread(restart)
        outage_ms = (time.perf_counter() - stopped) * 1000
        await asyncio.sleep(RESTART_SETTLE)
        result.closed_in_outage = list(crowd.closes)
        result.still_open = crowd.still_open
        print(
            f"  {layer_name}: {before}/{result.clients} got a broadcast before the restart; redis-server "
            f"back after {outage_ms:.0f} ms; {close_summary(result.closed_in_outage)} closed by the server "
            f"in the next {RESTART_SETTLE:.0f} s",
            flush=True,
        )

        layer = make_layer(layer_name)  # a fresh sender: the old one's connections died with Redis
        key = f"{tag}-after"
        crowd.expect(key, result.still_open)
        sent = time.perf_counter()
        try:
            await send(layer, 0, key)
        except Exception as error:
            result.notes.append(f"group_send after the restart failed: {type(error).__name__}: {error}")
        result.received = len(await crowd.collect(key, sent + RESTART_TIMEOUT))
        result.closed_after = crowd.closes[len(result.closed_in_outage) :]
        if result.closed_after:
            result.notes.append(f"{close_summary(result.closed_after)} more closed after the broadcast")
    finally:
        await crowd.close()
        if layer is not None:
            await close_layer(layer)
        await asyncio.sleep(TEARDOWN_SETTLE)
    return result


def daphne_notes(daphne: DaphneServer) -> list[str]:
    """WARNING and worse lines from a Daphne's log (it runs at LOG_LEVEL=WARNING), counted."""
    log = daphne.log()
    kinds = Counter(f"{m['level']} {m['logger']}: {m['message'][:140]}" for m in LOG_LINE.finditer(log))
    tracebacks = log.count("Traceback (most recent call last)")
    if not kinds and not tracebacks:
        return []
    top = "; ".join(f"{n}x {kind}" for kind, n in kinds.most_common(3))
    more = f" (+{len(kinds) - 3} other kinds)" if len(kinds) > 3 else ""
    return [f"Daphne log: {kinds.total()} WARNING+ lines, {tracebacks} tracebacks: {top}{more}"]


def run_with_daphne(env: dict[str, str], phase):
    """Start a Daphne, run ``phase(ws_url)`` (a coroutine function), stop the Daphne, add its log."""
    daphne = DaphneServer(env=env).start()
    try:
        result = asyncio.run(phase(daphne.ws_url + "/ws/"))
    finally:
        daphne.stop()
    result.notes.extend(daphne_notes(daphne))
    return result


def ms(value: float) -> str:
    return f"{value:.1f}" if value == value else "-"


def chart(path: str, fanouts: dict[str, list[FanoutResult]]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart")
        return
    figure, axes = plt.subplots(figsize=(7, 4))
    labels = ["send→last p50", "send→last p99", "first→last p50", "first→last p99"]
    width = 0.8 / len(fanouts)
    for index, (name, results) in enumerate(fanouts.items()):
        send_to_last = [v for r in results for v in r.send_to_last]
        first_to_last = [v for r in results for v in r.first_to_last]
        values = [
            percentile(send_to_last, 50),
            percentile(send_to_last, 99),
            percentile(first_to_last, 50),
            percentile(first_to_last, 99),
        ]
        axes.bar([x + index * width for x in range(len(labels))], values, width, label=name)
    axes.set_xticks([x + width * (len(fanouts) - 1) / 2 for x in range(len(labels))], labels)
    axes.set_ylabel("ms")
    axes.set_title("Broadcast fan-out on ws/")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    print(f"chart written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--broadcasts", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--chart", default=os.path.join(tempfile.gettempdir(), "fanout.png"))
    args = parser.parse_args()
    raise_file_limit()
    began = time.monotonic()

    redis = RedisServer()
    fanouts: dict[str, list[FanoutResult]] = {name: [] for name in LAYERS}
    restarts: dict[str, list[RestartResult]] = {name: [] for name in LAYERS}
    try:
        redis.start()
        base = project_env(redis.url, LOG_LEVEL="WARNING")
        os.environ.update(base, DJANGO_SETTINGS_MODULE="project.settings", CHANNEL_LAYER=LAYERS[0])
        import django

        django.setup()
        print(
            f"redis-server on port {redis.port}; {args.clients} clients, {args.broadcasts} broadcasts, "
            f"{args.rounds} rounds",
            flush=True,
        )
        for round_number in range(1, args.rounds + 1):
            for name in LAYERS:
                env = {**base, "CHANNEL_LAYER": name}
                tag = f"{name}-r{round_number}"
                print(f"round {round_number}/{args.rounds} {name}: fan-out", flush=True)
                result = run_with_daphne(
                    env, lambda url, n=name, t=tag: fanout(n, url, args.clients, args.broadcasts, t)
                )
                fanouts[name].append(result)
                print(
                    f"round {round_number}/{args.rounds} {name}: "
                    f"send→last p50 {ms(percentile(result.send_to_last, 50))} ms, "
                    f"first→last p50 {ms(percentile(result.first_to_last, 50))} ms, "
                    f"group_send call p50 {ms(percentile(result.send_call, 50))} ms, lost {result.lost}",
                    flush=True,
                )
                for note in result.notes:
                    print(f"  {name}: {note}", flush=True)
                print(f"round {round_number}/{args.rounds} {name}: Redis restart", flush=True)
                restart = run_with_daphne(env, lambda url, n=name, t=tag: after_restart(n, url, redis, t))
                restarts[name].append(restart)
                print(
                    f"round {round_number}/{args.rounds} {name}: after the restart "
                    f"{restart.received}/{restart.still_open} open clients got the broadcast",
                    flush=True,
                )
                for note in restart.notes:
                    print(f"  {name}: {note}", flush=True)
    finally:
        redis.stop()

    print()
    header = (
        f"{'layer':<8}{'round':>6}{'send→last p50':>15}{'p99':>9}{'first→last p50':>16}{'p99':>9}"
        f"{'lost':>7}{'after restart':>15}   closed during outage"
    )
    print(header)
    print("-" * len(header))
    for name in LAYERS:
        pairs = zip(fanouts[name], restarts[name], strict=True)
        rows = [(str(n), [f], [r]) for n, (f, r) in enumerate(pairs, 1)]
        if len(rows) > 1:
            rows.append(("all", fanouts[name], restarts[name]))
        for label, results, restart_results in rows:
            send_to_last = [v for r in results for v in r.send_to_last]
            first_to_last = [v for r in results for v in r.first_to_last]
            received = sum(r.received for r in restart_results)
            total = sum(r.clients for r in restart_results)
            closed = [c for r in restart_results for c in r.closed_in_outage]
            print(
                f"{name:<8}{label:>6}"
                f"{ms(percentile(send_to_last, 50)):>15}{ms(percentile(send_to_last, 99)):>9}"
                f"{ms(percentile(first_to_last, 50)):>16}{ms(percentile(first_to_last, 99)):>9}"
                f"{sum(r.lost for r in results):>7}{f'{received}/{total}':>15}   {close_summary(closed)}"
            )
    print(
        f"times in ms over {args.broadcasts} broadcasts per round to {args.clients} clients; "
        f"lost = client deliveries missing after {DELIVERY_TIMEOUT:.0f} s"
    )
    chart(args.chart, fanouts)
    print(f"took {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
