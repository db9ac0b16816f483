"""Measure broadcast fan-out on ws/ through the push log, and what a Redis restart costs it.

    .venv/bin/python -m bench.fanout [--clients 1000] [--broadcasts 20] [--rounds 2]

Starts a private redis-server and, for each round, a Daphne serving the project with
LOG_LEVEL=WARNING. N plain clients connect to ws/ (in batches of 100). The benchmark appends
pushes to the project's push log (echo.pushlog.append, what services.broadcast_send does after
recording the broadcast): warm-up pushes (not counted) until one reaches every client (a check
that all are in the group "all" before measuring), then K pushes one after another. The
Daphne's tail reads each from the Redis Stream and hands it to its local members. Every client
time-stamps the frame "Server broadcast: TEXT" when it arrives; a push that has not reached
every client within 10 s counts the missing ones as lost, one that reaches a client twice as a
duplicate. Per push: send -> last client, and first client -> last client, in ms; p50 and p99
over the pushes.

Then, on a fresh Daphne with 100 clients, broadcasts go out through services.broadcast_send
(recorded in the benchmark's SQLite database, as the command and the admin do) every 0.1 s
while the redis-server is stopped and started again on the same port (it keeps nothing, its
counter included): those Redis took before and after the restart must all arrive (those refused
while it was down were refused to their sender and are not expected). 5 s after the restart one
more broadcast is sent, and the clients that get it within 5 s are counted, as are the clients
the server closed during the outage.
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

from bench.crowd import Clients, Pusher, close_summary, percentile, use_project
from bench.environment import project_env, raise_file_limit
from tests.servers import DaphneServer, RedisServer

DELIVERY_TIMEOUT = 10.0  # s for a push to reach every client
SEND_TIMEOUT = 10.0  # s for the append itself
BARRIER_ATTEMPT = 3.0  # s a warm-up push may take
BARRIER_TIMEOUT = 30.0  # s of warm-up pushes before measuring anyway
TEARDOWN_SETTLE = 2.0  # s between closing the clients and stopping the Daphne
RESTART_CLIENTS = 100
AROUND_INTERVAL = 0.1  # s between broadcasts sent around the restart
AROUND_BEFORE = 1.0  # s of them before the redis-server is stopped
AROUND_AFTER = 1.0  # s of them after it is back
RESTART_SETTLE = 5.0  # s between the new redis-server and the next broadcast
RESTART_TIMEOUT = 5.0  # s for that broadcast to arrive
# A log line at WARNING or worse: "<time> LEVEL logger message" (project.settings' format).
LOG_LINE = re.compile(r"^.*? (?P<level>CRITICAL|ERROR|WARNING) +(?P<logger>\S+) (?P<message>.*)$", re.M)


@dataclass
class FanoutResult:
    send_to_last: list[float] = field(default_factory=list)  # ms, one per push
    first_to_last: list[float] = field(default_factory=list)
    send_call: list[float] = field(default_factory=list)  # ms the append call itself took
    lost: int = 0
    duplicates: int = 0
    connected: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class RestartResult:
    clients: int = 0
    received: int = 0  # clients that got the next broadcast
    still_open: int = 0
    around_sent: int = 0  # broadcasts Redis took around the restart
    around_refused: int = 0  # broadcasts refused while it was down (their sender was told)
    around_missing: int = 0  # client deliveries of the taken ones that never came
    duplicates: int = 0
    closed_in_outage: list = field(default_factory=list)
    closed_after: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


async def send(pusher: Pusher, key: str) -> float:
    """Append one push; return the perf_counter at which it was sent."""
    sent = time.perf_counter()
    await asyncio.wait_for(pusher.send(key), SEND_TIMEOUT)
    return sent


async def send_recorded(pusher: Pusher, key: str) -> int:
    """Send a broadcast the way the command and the admin do (recorded, then appended)."""
    from echo import services

    broadcast = await asyncio.wait_for(asyncio.to_thread(services.broadcast_send, text=key), SEND_TIMEOUT)
    pusher.saw(broadcast.position)
    return broadcast.position


async def join_barrier(crowd: Clients, pusher: Pusher, tag: str, recorded: bool = False):
    """Send warm-up pushes until one reaches every open client: all have joined the group.

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
        sent = time.perf_counter()
        await (send_recorded(pusher, key) if recorded else send(pusher, key))
        reached = len(await crowd.collect(key, sent + BARRIER_ATTEMPT))
        first = reached if attempts == 1 else first
        best = max(best, reached)
        if best >= crowd.still_open:
            break
    return first, best, attempts, time.perf_counter() - started


async def fanout(
    url: str, clients: int, broadcasts: int, tag: str, pusher: Pusher | None = None
) -> FanoutResult:
    """Connect ``clients`` to ``url`` and time ``broadcasts`` pushes to all of them (Django set up)."""
    result = FanoutResult()
    crowd = Clients()
    pusher = pusher or Pusher()
    try:
        started = time.perf_counter()
        await crowd.open(url, clients)
        result.connected = len(crowd.connections)
        print(
            f"  {result.connected}/{clients} clients connected in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        if crowd.connect_errors:
            note = f"{len(crowd.connect_errors)} handshakes failed, e.g. {crowd.connect_errors[0]}"
            result.notes.append(note)
            print(f"  {note}", flush=True)
        first, reached, attempts, took = await join_barrier(crowd, pusher, f"{tag}-warmup")
        print(
            f"  first warm-up push, sent right after the last handshake, reached "
            f"{first}/{result.connected}; {reached}/{result.connected} after {attempts} in {took:.1f} s",
            flush=True,
        )
        if reached < result.connected:
            result.notes.append(f"warm-up pushes never reached more than {reached}/{result.connected}")
        for number in range(broadcasts):
            key = f"{tag}-{number}"
            crowd.expect(key, result.connected)
            sent = time.perf_counter()
            try:
                await send(pusher, key)
            except Exception as error:
                result.notes.append(f"push {number}: append failed: {type(error).__name__}: {error}")
            result.send_call.append((time.perf_counter() - sent) * 1000)
            times = await crowd.collect(key, sent + DELIVERY_TIMEOUT)
            result.lost += result.connected - len(times)
            if times:
                result.send_to_last.append((max(times) - sent) * 1000)
                result.first_to_last.append((max(times) - min(times)) * 1000)
        result.duplicates = crowd.duplicates
        if crowd.closes:
            result.notes.append(f"server closed {close_summary(crowd.closes)} clients during the fan-out")
    finally:
        await crowd.close()
        # Let the server finish its disconnects before it is stopped.
        await asyncio.sleep(TEARDOWN_SETTLE)
    return result


async def around(crowd: Clients, pusher: Pusher, tag: str, stop: asyncio.Event, result: RestartResult):
    """Send a recorded broadcast every AROUND_INTERVAL until ``stop``; return the keys Redis took."""
    from echo import services

    taken: list[str] = []
    for number in range(int(60 / AROUND_INTERVAL)):  # bounded: a minute at most
        if stop.is_set():
            break
        key = f"{tag}-around-{number}"
        crowd.expect(key, crowd.still_open)
        try:
            await send_recorded(pusher, key)
            taken.append(key)
        except services.BroadcastNotSent:
            result.around_refused += 1
            await crowd.collect(key, 0)  # not expected: forget it
        except Exception as error:
            result.notes.append(f"broadcast around the restart: {type(error).__name__}: {error}")
            await crowd.collect(key, 0)
        await asyncio.sleep(AROUND_INTERVAL)
    return taken


async def after_restart(url: str, redis: RedisServer, tag: str, pusher: Pusher) -> RestartResult:
    result = RestartResult()
    crowd = Clients()
    try:
        await crowd.open(url, RESTART_CLIENTS)
        result.clients = len(crowd.connections)
        if crowd.connect_errors:
            result.notes.append(f"{len(crowd.connect_errors)} handshakes failed")
        _, before, _, _ = await join_barrier(crowd, pusher, f"{tag}-before", recorded=True)

        stop = asyncio.Event()
        sender = asyncio.create_task(around(crowd, pusher, tag, stop, result))
        await asyncio.sleep(AROUND_BEFORE)
        stopped = time.perf_counter()

        def restart() -> None:
            redis.stop()
            redis.start()

        await asyncio.to_thread(restart)
        back = time.perf_counter()
        outage_ms = (back - stopped) * 1000
        await asyncio.sleep(AROUND_AFTER)
        stop.set()
        taken = await asyncio.wait_for(sender, SEND_TIMEOUT + 5)
        await asyncio.sleep(max(0.0, back + RESTART_SETTLE - time.perf_counter()))
        result.closed_in_outage = list(crowd.closes)
        result.still_open = crowd.still_open
        result.around_sent = len(taken)
        for key in taken:
            expected = crowd.expected.get(key, 0)
            result.around_missing += expected - len(await crowd.collect(key, time.perf_counter() + 1))
        print(
            f"  {before}/{result.clients} got a broadcast before the restart; redis-server back after "
            f"{outage_ms:.0f} ms; around it {result.around_sent} broadcasts taken "
            f"({result.around_refused} refused while down), {result.around_missing} deliveries of them "
            f"missing; {close_summary(result.closed_in_outage)} closed by the server",
            flush=True,
        )

        key = f"{tag}-after"
        crowd.expect(key, result.still_open)
        sent = time.perf_counter()
        try:
            await send_recorded(pusher, key)
        except Exception as error:
            result.notes.append(f"broadcast after the restart failed: {type(error).__name__}: {error}")
        result.received = len(await crowd.collect(key, sent + RESTART_TIMEOUT))
        result.duplicates = crowd.duplicates
        result.closed_after = crowd.closes[len(result.closed_in_outage) :]
        if result.closed_after:
            result.notes.append(f"{close_summary(result.closed_after)} more closed after the broadcast")
    finally:
        await crowd.close()
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


def chart(path: str, fanouts: list[FanoutResult]) -> None:
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
    for index, result in enumerate(fanouts):
        values = [
            percentile(result.send_to_last, 50),
            percentile(result.send_to_last, 99),
            percentile(result.first_to_last, 50),
            percentile(result.first_to_last, 99),
        ]
        axes.bar([x + index * width for x in range(len(labels))], values, width, label=f"round {index + 1}")
    axes.set_xticks([x + width * (len(fanouts) - 1) / 2 for x in range(len(labels))], labels)
    axes.set_ylabel("ms")
    axes.set_title("Push fan-out on ws/ (push log)")
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
    fanouts: list[FanoutResult] = []
    restarts: list[RestartResult] = []
    try:
        redis.start()
        env = project_env(redis.url, LOG_LEVEL="WARNING")
        use_project(env)
        pusher = Pusher()
        print(
            f"redis-server on port {redis.port}; {args.clients} clients, {args.broadcasts} pushes, "
            f"{args.rounds} rounds",
            flush=True,
        )
        for round_number in range(1, args.rounds + 1):
            tag = f"r{round_number}"
            print(f"round {round_number}/{args.rounds}: fan-out", flush=True)
            result = run_with_daphne(
                env, lambda url, t=tag: fanout(url, args.clients, args.broadcasts, t, pusher)
            )
            fanouts.append(result)
            print(
                f"round {round_number}/{args.rounds}: "
                f"send→last p50 {ms(percentile(result.send_to_last, 50))} ms, "
                f"first→last p50 {ms(percentile(result.first_to_last, 50))} ms, "
                f"append call p50 {ms(percentile(result.send_call, 50))} ms, lost {result.lost}, "
                f"duplicates {result.duplicates}",
                flush=True,
            )
            for note in result.notes:
                print(f"  {note}", flush=True)
            print(f"round {round_number}/{args.rounds}: Redis restart", flush=True)
            restart = run_with_daphne(env, lambda url, t=tag: after_restart(url, redis, t, pusher))
            restarts.append(restart)
            print(
                f"round {round_number}/{args.rounds}: after the restart "
                f"{restart.received}/{restart.still_open} open clients got the next broadcast",
                flush=True,
            )
            for note in restart.notes:
                print(f"  {note}", flush=True)
    finally:
        redis.stop()

    print()
    header = (
        f"{'round':>6}{'send→last p50':>15}{'p99':>9}{'first→last p50':>16}{'p99':>9}{'lost':>7}{'dup':>5}"
        f"{'after restart':>15}{'around: sent/refused/missing':>30}   closed during outage"
    )
    print(header)
    print("-" * len(header))
    rows = [(str(n), [f], [r]) for n, (f, r) in enumerate(zip(fanouts, restarts, strict=True), 1)]
    if len(rows) > 1:
        rows.append(("all", fanouts, restarts))
    for label, results, restart_results in rows:
        send_to_last = [v for r in results for v in r.send_to_last]
        first_to_last = [v for r in results for v in r.first_to_last]
        received = sum(r.received for r in restart_results)
        total = sum(r.clients for r in restart_results)
        around_figures = "/".join(
            str(sum(getattr(r, name) for r in restart_results))
            for name in ("around_sent", "around_refused", "around_missing")
        )
        duplicates = sum(r.duplicates for r in results) + sum(r.duplicates for r in restart_results)
        closed = [c for r in restart_results for c in r.closed_in_outage]
        print(
            f"{label:>6}"
            f"{ms(percentile(send_to_last, 50)):>15}{ms(percentile(send_to_last, 99)):>9}"
            f"{ms(percentile(first_to_last, 50)):>16}{ms(percentile(first_to_last, 99)):>9}"
            f"{sum(r.lost for r in results):>7}{duplicates:>5}{f'{received}/{total}':>15}"
            f"{around_figures:>30}   {close_summary(closed)}"
        )
    print(
        f"times in ms over {args.broadcasts} pushes per round to {args.clients} clients; "
        f"lost = client deliveries missing after {DELIVERY_TIMEOUT:.0f} s; around = broadcasts sent "
        f"every {AROUND_INTERVAL} s from {AROUND_BEFORE:.0f} s before the Redis restart to "
        f"{AROUND_AFTER:.0f} s after, Redis took / refused while down / deliveries of the taken missing"
    )
    chart(args.chart, fanouts)
    print(f"took {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
