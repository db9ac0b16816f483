"""Delivery under stress: order, a partition, a reconnect storm and PostgreSQL churn, against live processes.

    .venv/bin/python -m bench.delivery [--only order|partition|storm|postgres ...] [sizes, see --help]

Every part starts its own redis-server, Daphnes (`daphne -v 0`, DJANGO_DEBUG=0, LOG_LEVEL=WARNING
or --log-level, WEBSOCKET_MAX_PER_ADDRESS=0: every client comes from 127.0.0.1) and load on
127.0.0.1, and stops them by their process ids. Pushes go the real way: `manage.py broadcast`
processes, or services.broadcast_send in a broadcaster process (bench/delivery_load.py), recorded
in the part's database and appended to the push log. Clients speak echo.json and keep every push
id they get, with its arrival time (time.monotonic(), shared by every process).

order      2 Daphnes, 20 clients on each; 8 `manage.py broadcast` processes started together, 3
           rounds: every client must get the ids the commands printed, each once, in increasing
           order. Prints every client that did not.
partition  2 Daphnes, one reaching Redis through a tests.faults.LinkProxy; 20 clients on each. The
           link is cut while 8 broadcasts are sent (`manage.py broadcast` on the real Redis, one
           started every 0.75 s), and restored once 6 s have passed and every command is done (a
           command takes seconds to start on a busy machine; the cut length is printed):
           deliveries on each side (160 expected), duplicates, out-of-order, and how long after
           the restore the cut side had everything.
storm      one Daphne listening with an explicit backlog (`-e tcp:port=P:interface=127.0.0.1:
           backlog=2048`; --storm-backlog 0: -b/-p), 2,000 clients from a load process (picows),
           5 broadcasts a second. Daphne gets SIGTERM and is started again; once it listens, all
           2,000 reconnect at once with ?after=<the last position each got> (a failed handshake is
           retried, 5 attempts): time until every one has its `resumed` envelope and every push
           sent while it was away (goal 5 s), handshake failures, pushes missed by the end,
           duplicates, out-of-order, the kernel's listen overflows (TcpExtListenOverflows) during
           the storm, and, for scale, the CPU used and the live push latency before the restart
           and once all are back.
postgres   when PostgreSQL answers on 127.0.0.1:5432 (user postgres): a throwaway database
           echo_bench_<random>, migrated; 2 Daphnes on it, 500 clients each connecting with
           ?after=, waiting for welcome and resumed, holding ~1 s, closing, again, for 30 s (then
           one last resume each), while 5 broadcasts a second go out: welcome p50/p99, replay
           (resumed) p50/p99, failed sessions, truncated replays, clients that missed a push, and
           pushes sent while a client was connected that reached it only on its next connection.
           The database is dropped at the end, whatever happens. Skipped, with the reason, when
           PostgreSQL does not answer.

Prints a table (figure, value, goal, met?) and exits 1 if a correctness figure (lost, missed,
duplicates, out-of-order, handshake failures, truncated replays, failed sends) is not 0.
The load shares the machine (2 cores here) with the servers: times include its work.
"""

import argparse
import asyncio
import bisect
import json
import math
import os
import queue
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import websockets

from bench.crowd import percentile
from bench.environment import project_env, raise_file_limit
from bench.fanout import daphne_notes
from tests.faults import LinkProxy
from tests.servers import ROOT, DaphneServer, RedisServer

PARTS = ("order", "partition", "storm", "postgres")
# As the project starts Daphne (./dev, deploy/): 30 s for a handshake under load, not 5.
DAPHNE_ARGS = ["-v", "0", "--websocket_connect_timeout", "30"]
COMMAND_TIMEOUT = 60.0  # s for one manage.py broadcast
OPEN_TIMEOUT = 30.0  # s for a client's handshake and welcome
DELIVERY_TIMEOUT = 30.0  # s for every client to have every push, once all are sent
LATE_SETTLE = 1.0  # s to wait for late duplicates once everything has arrived
GRACE = 0.5  # s a push may take to arrive: one sent less than this before a close is not expected live
POSTGRES_URLS = (
    "postgresql://postgres@127.0.0.1:5432/postgres",
    "postgresql://postgres:postgres@127.0.0.1:5432/postgres",
)
BROADCAST_LINE = re.compile(r"Broadcast #(\d+) sent")


@dataclass
class Figure:
    part: str
    name: str
    value: str
    goal: str = ""
    met: bool | None = None  # None: no goal
    correctness: bool = False  # a count that must be 0: one that is not fails the run


def zero(part: str, name: str, count: int) -> Figure:
    """A correctness figure: ``count`` must be 0."""
    return Figure(part, name, f"{count:,}", "0", count == 0, correctness=True)


def info(part: str, name: str, value: str) -> Figure:
    return Figure(part, name, value)


def faults(ids: list[int]) -> tuple[int, int]:
    """Return the duplicates and the out-of-order arrivals (a first arrival below one already had)."""
    seen: set[int] = set()
    highest = None
    duplicates = out_of_order = 0
    for position in ids:
        if position in seen:
            duplicates += 1
            continue
        if highest is not None and position < highest:
            out_of_order += 1
        seen.add(position)
        highest = position if highest is None else max(highest, position)
    return duplicates, out_of_order


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f}" if seconds == seconds else "-"


def p50_p99(seconds: list[float]) -> str:
    """The median and 99th percentile of ``seconds``, in ms."""
    return f"{ms(percentile(seconds, 50))} / {ms(percentile(seconds, 99))}"


# --- processes ------------------------------------------------------------------------


def backlog_name(backlog: int) -> str:
    return f"backlog {backlog}" if backlog else "-b/-p: Twisted's backlog of 50"


def listening_daphne(*, env: dict[str, str], backlog: int, args: list[str]) -> DaphneServer:
    """A Daphne listening with an explicit backlog (``-e tcp:...:backlog=N``); 0 keeps -b/-p (50)."""
    server = DaphneServer(env=env, args=args)
    server.backlog = backlog
    return server


class Piped:
    """A python -m bench.delivery_load process: commands on its stdin, lines from its stdout."""

    def __init__(self, arguments: list[str], env: dict[str, str] | None = None) -> None:
        command = [sys.executable, "-m", "bench.delivery_load", *arguments]
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.on_line(line.rstrip("\n"))
        self.lines.put(None)

    def on_line(self, line: str) -> None:
        self.lines.put(line)

    def expect(self, prefix: str, timeout: float) -> list[str]:
        """Return the words of the next line starting with ``prefix``; fail after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise RuntimeError(f"the load process exited ({self.process.wait()}) before {prefix!r}")
            if line.startswith(prefix):
                return line.split()
            print(f"  load: {line}", flush=True)
        raise RuntimeError(f"no {prefix!r} from the load process within {timeout:.0f} s")

    def send(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(f"the load process did not finish within {timeout:.0f} s") from None

    def stop(self) -> None:
        """End the process by its pid, if still running."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Broadcaster(Piped):
    """services.broadcast_send, ``rate`` a second, in a process of its own on the part's settings."""

    def __init__(self, env: dict[str, str], rate: float, seconds: float = 900) -> None:
        self.sent: list[tuple[int, float, float]] = []  # (position, monotonic before, after)
        self.refused: list[str] = []
        settings = {**env, "DJANGO_SETTINGS_MODULE": "project.settings", "LOG_LEVEL": "WARNING"}
        super().__init__(["broadcaster", "--rate", str(rate), "--seconds", str(seconds)], settings)

    def on_line(self, line: str) -> None:
        words = line.split()
        if words and words[0] == "SENT":
            self.sent.append((int(words[1]), float(words[2]), float(words[3])))
        elif words and words[0] == "REFUSED":
            self.refused.append(line)
        else:
            print(f"  broadcaster: {line}", flush=True)

    def finish(self) -> None:
        """Stop sending (a line on stdin) and wait for the last report."""
        if self.process.poll() is None:
            try:
                self.send("STOP")
                self.process.stdin.close()
            except OSError:
                pass
            self.wait(30)
        self.reader.join(10)


async def broadcast_command(env: dict[str, str], text: str) -> tuple[int | None, str]:
    """Run ``manage.py broadcast TEXT``; return the position it printed (None if it failed) and its output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "manage.py",
        "broadcast",
        text,
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        return None, f"manage.py broadcast did not finish within {COMMAND_TIMEOUT:.0f} s"
    output = (out.decode() + err.decode()).strip()
    match = BROADCAST_LINE.search(output)
    if process.returncode != 0 or match is None:
        return None, f"exit {process.returncode}: {output[-300:]}"
    return int(match[1]), output


def cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) process ``pid`` has used so far; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def listen_counters() -> dict[str, int]:
    """The kernel's TcpExt ListenOverflows and ListenDrops (what `nstat -az TcpExtListenOverflows` shows)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for header, values in zip(lines[::2], lines[1::2], strict=False):
        if header.startswith("TcpExt:"):
            counters = dict(zip(header.split()[1:], map(int, values.split()[1:]), strict=False))
            return {name: counters.get(name, 0) for name in ("ListenOverflows", "ListenDrops")}
    return {"ListenOverflows": 0, "ListenDrops": 0}


# --- a few clients in this process (order, partition) -----------------------------------


class JsonClient:
    """An echo.json client (websockets) that keeps the id and arrival time of every push."""

    def __init__(self, url: str, name: str) -> None:
        self.url, self.name = url, name
        self.ids: list[int] = []
        self.times: list[float] = []
        self.welcomed = asyncio.Event()
        self.closing = False
        self.server_close: tuple | None = None
        self.ws = None
        self.reader: asyncio.Task | None = None

    async def open(self) -> None:
        self.ws = await websockets.connect(
            self.url,
            subprotocols=["echo.json"],
            open_timeout=OPEN_TIMEOUT,
            ping_interval=None,
            close_timeout=5,
        )
        self.reader = asyncio.create_task(self.read())
        await asyncio.wait_for(self.welcomed.wait(), OPEN_TIMEOUT)

    async def read(self) -> None:
        try:
            async for frame in self.ws:
                message = json.loads(frame)
                if message["type"] == "broadcast":
                    self.ids.append(message["id"])
                    self.times.append(time.monotonic())
                elif message["type"] == "welcome":
                    self.welcomed.set()
        except websockets.ConnectionClosed:
            pass
        if not self.closing:
            self.server_close = (self.ws.close_code, self.ws.close_reason)

    def arrival(self, positions: set[int]) -> float | None:
        """When this client had every one of ``positions``, or None."""
        found = {}
        for position, at in zip(self.ids, self.times, strict=True):
            if position in positions and position not in found:
                found[position] = at
        return max(found.values(), default=0.0) if len(found) == len(positions) else None

    async def close(self) -> None:
        self.closing = True
        if self.ws is not None:
            try:
                await asyncio.wait_for(self.ws.close(), 10)
            except Exception:
                self.ws.transport.abort()
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)


async def open_all(clients: list[JsonClient]) -> None:
    results = await asyncio.gather(*(client.open() for client in clients), return_exceptions=True)
    failed = [result for result in results if isinstance(result, BaseException)]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(clients)} clients could not connect: {failed[0]!r}")


async def wait_all(clients: list[JsonClient], positions: set[int], timeout: float) -> float | None:
    """Wait until every client has every one of ``positions``; return when the last got there, or None."""
    deadline = time.monotonic() + timeout
    while True:
        arrivals = [client.arrival(positions) for client in clients]
        if all(at is not None for at in arrivals):
            return max(arrivals, default=time.monotonic())
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.05)


async def close_all(clients: list[JsonClient]) -> None:
    await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)


def stop_all(*servers) -> None:
    for server in servers:
        if server is not None:
            try:
                server.stop()
            except Exception as error:  # go on stopping the others
                print(f"  could not stop {server!r}: {error}", flush=True)


def print_notes(part: str, daphnes: list[DaphneServer]) -> None:
    """Print what each Daphne logged at WARNING or worse, counted, and where its log is."""
    for number, daphne in enumerate(daphnes, 1):
        for note in daphne_notes(daphne):
            print(f"  {part}: Daphne {number} ({daphne.log_path}): {note}", flush=True)


# --- order -------------------------------------------------------------------------------


async def order(args) -> list[Figure]:
    part = "order"
    redis = RedisServer().start()
    daphnes: list[DaphneServer] = []
    clients: list[JsonClient] = []
    try:
        env = project_env(redis.url, LOG_LEVEL=args.log_level)
        daphnes = [DaphneServer(env=env, args=DAPHNE_ARGS).start() for _ in range(2)]
        clients = [
            JsonClient(daphne.ws_url + "/ws/", f"Daphne {d} client {c}")
            for d, daphne in enumerate(daphnes, 1)
            for c in range(1, args.order_clients + 1)
        ]
        await open_all(clients)
        print(f"{part}: {len(clients)} clients on 2 Daphnes", flush=True)
        positions: list[int] = []
        failed: list[str] = []
        for round_number in range(1, args.order_rounds + 1):
            started = time.monotonic()
            results = await asyncio.gather(
                *(
                    broadcast_command(env, f"order round {round_number} sender {sender}")
                    for sender in range(1, args.order_senders + 1)
                )
            )
            positions += [position for position, _ in results if position is not None]
            failed += [output for position, output in results if position is None]
            print(
                f"{part}: round {round_number}/{args.order_rounds}: {args.order_senders} broadcast commands "
                f"in {time.monotonic() - started:.1f} s",
                flush=True,
            )
        expected = sorted(positions)
        await wait_all(clients, set(expected), DELIVERY_TIMEOUT)
        await asyncio.sleep(LATE_SETTLE)
    finally:
        await close_all(clients)
        stop_all(*daphnes, redis)
    print_notes(part, daphnes)
    violations = [client for client in clients if client.ids != expected]
    for client in violations[:10]:
        got = set(client.ids)
        duplicates, out_of_order = faults(client.ids)
        missing = [position for position in expected if position not in got]
        print(
            f"  {part}: {client.name}: {len(client.ids)} ids, missing {missing[:10]}, "
            f"{duplicates} duplicates, {out_of_order} out of order; first ids {client.ids[:12]}",
            flush=True,
        )
    for output in failed[:3]:
        print(f"  {part}: a broadcast command failed: {output}", flush=True)
    duplicates = sum(faults(client.ids)[0] for client in clients)
    out_of_order = sum(faults(client.ids)[1] for client in clients)
    lost = sum(len(set(expected) - set(client.ids)) for client in clients)
    sent = args.order_rounds * args.order_senders
    return [
        info(
            part,
            f"broadcasts sent ({args.order_senders} commands at once x {args.order_rounds})",
            f"{len(expected)}/{sent}",
        ),
        zero(part, "broadcast commands failed", len(failed)),
        zero(
            part,
            f"clients whose ids differ from the senders' sorted ({len(clients)} clients)",
            len(violations),
        ),
        zero(part, "deliveries lost", lost),
        zero(part, "duplicates", duplicates),
        zero(part, "out-of-order", out_of_order),
    ]


# --- partition ---------------------------------------------------------------------------


async def partition(args) -> list[Figure]:
    part = "partition"
    redis = RedisServer().start()
    proxy = LinkProxy(redis.port).start()
    daphnes: list[DaphneServer] = []
    sides: dict[str, list[JsonClient]] = {"direct": [], "cut": []}
    try:
        env = project_env(redis.url, LOG_LEVEL=args.log_level)
        direct = DaphneServer(env=env, args=DAPHNE_ARGS).start()
        cut = DaphneServer(env={**env, "REDIS_URL": proxy.url_for(db=0)}, args=DAPHNE_ARGS).start()
        daphnes = [direct, cut]
        for side, daphne in (("direct", direct), ("cut", cut)):
            sides[side] = [
                JsonClient(daphne.ws_url + "/ws/", f"{side} client {n}")
                for n in range(1, args.partition_clients + 1)
            ]
        everyone = sides["direct"] + sides["cut"]
        await open_all(everyone)
        # One broadcast first: the cut side's tail reads the log through the proxy.
        warm, output = await broadcast_command(env, "partition warm-up")
        if warm is None or await wait_all(everyone, {warm}, DELIVERY_TIMEOUT) is None:
            raise RuntimeError(f"the warm-up broadcast did not reach every client: {output}")
        print(f"{part}: {len(everyone)} clients on 2 Daphnes, one through the proxy; cutting", flush=True)

        cut_at = time.monotonic()
        await asyncio.to_thread(proxy.cut)

        finished: list[float] = []

        async def send(number: int) -> tuple[int | None, str]:
            await asyncio.sleep(max(0.0, cut_at + number * args.partition_interval - time.monotonic()))
            result = await broadcast_command(env, f"partition {number + 1}")
            finished.append(time.monotonic() - cut_at)
            return result

        # The link stays cut until every command is done (at least args.cut s): each push is
        # appended while the cut side cannot read the log.
        results = await asyncio.gather(*(send(number) for number in range(args.partition_broadcasts)))
        await asyncio.sleep(max(0.0, cut_at + args.cut - time.monotonic()))
        restored_at = time.monotonic()
        await asyncio.to_thread(proxy.restore)
        positions = {position for position, _ in results if position is not None}
        failed = [output for position, output in results if position is None]
        cut_length = restored_at - cut_at
        print(
            f"{part}: {len(positions)} broadcasts sent during a cut of {cut_length:.1f} s (commands done "
            f"{', '.join(f'{at:.1f}' for at in sorted(finished))} s after the cut); restored",
            flush=True,
        )
        before_restore = sum(
            1
            for client in sides["cut"]
            for p, at in zip(client.ids, client.times, strict=True)
            if p in positions and at < restored_at
        )
        cut_done = await wait_all(sides["cut"], positions, DELIVERY_TIMEOUT)
        await wait_all(sides["direct"], positions, 5)
        await asyncio.sleep(LATE_SETTLE)
    finally:
        await close_all(sides["direct"] + sides["cut"])
        stop_all(*daphnes, proxy, redis)
    print_notes(part, daphnes)
    for output in failed[:3]:
        print(f"  {part}: a broadcast command failed: {output}", flush=True)
    figures = [
        info(part, "cut length (s)", f"{cut_length:.1f}"),
        zero(part, "broadcast commands failed", len(failed)),
    ]
    for side, clients in sides.items():
        delivered = sum(len(positions & set(client.ids)) for client in clients)
        expected = len(clients) * args.partition_broadcasts
        figures.append(
            Figure(
                part,
                f"deliveries, {side} side",
                f"{delivered}/{expected}",
                str(expected),
                delivered == expected,
            )
        )
        figures.append(zero(part, f"lost, {side} side", len(clients) * len(positions) - delivered))
    everyone = sides["direct"] + sides["cut"]
    figures += [
        zero(part, "duplicates", sum(faults(client.ids)[0] for client in everyone)),
        zero(part, "out-of-order", sum(faults(client.ids)[1] for client in everyone)),
        zero(part, "clients the server closed", sum(client.server_close is not None for client in everyone)),
        info(part, "cut side: deliveries before the restore", str(before_restore)),
        info(
            part,
            "cut side had everything, s after the restore",
            f"{cut_done - restored_at:.2f}"
            if cut_done is not None
            else f"not within {DELIVERY_TIMEOUT:.0f} s",
        ),
    ]
    return figures


# --- storm -------------------------------------------------------------------------------


def storm_counts(
    result: dict, sent: list[tuple[int, float, float]], terminated: float = math.inf, back: float = math.inf
) -> dict:
    """Count what the storm load's clients got against what was sent.

    A client is back and caught up once it has its resumed envelope and every push appended
    after its ?after= position and done before the GO; pushes missed are those after its first
    welcome it never got, by the end. Live latency (arrival - done) is taken over the pushes
    done before ``terminated`` (the SIGTERM), and over those sent after ``back`` (all back).
    """
    sent = sorted(sent)
    go = result["go"]
    done_at = {position: done for position, _, done in sent}
    started_at = {position: before for position, before, _ in sent}
    latency_before: list[float] = []
    latency_after: list[float] = []
    final = sent[-1][0] if sent else None
    final_arrivals: list[float] = []
    caught: list[float] = []
    not_caught = missed = duplicates = out_of_order = retried = 0
    failures = Counter()
    for sessions in result["clients"]:
        first, *storm_sessions = sessions
        ids = [position for session in sessions for position in session[8]]
        for session in sessions:
            for position, at in zip(session[8], session[9], strict=True):
                if position not in done_at:
                    continue
                if position == final:
                    final_arrivals.append(at - done_at[position])
                if session is first and done_at[position] <= terminated:
                    latency_before.append(at - done_at[position])
                elif started_at[position] >= back:
                    latency_after.append(at - done_at[position])
        dup, ooo = faults(ids)
        duplicates, out_of_order = duplicates + dup, out_of_order + ooo
        start = first[4] if first[4] is not None else 0
        got = set(ids)
        missed += sum(1 for position, _, _ in sent if position > start and position not in got)
        failures.update(session[10].split(":")[0] for session in sessions if session[10])
        retried += len(storm_sessions) > 1
        last = storm_sessions[-1] if storm_sessions else None
        if last is None or last[10] or last[2] is None:
            not_caught += 1
            continue
        after = last[3] if last[3] is not None else start
        needed = {position for position, _, done in sent if position > after and done <= go}
        arrivals = {}
        for session in storm_sessions:
            for position, at in zip(session[8], session[9], strict=True):
                arrivals.setdefault(position, at)
        if not needed <= arrivals.keys():
            not_caught += 1
            continue
        caught.append(max([last[2], *(arrivals[position] for position in needed)]) - go)
    return {
        "caught": caught,
        "not_caught": not_caught,
        "retried": retried,
        "missed": missed,
        "duplicates": duplicates,
        "out_of_order": out_of_order,
        "handshake_failures": failures["handshake"],
        "not_ready": failures["after the handshake"],
        "latency_before": latency_before,
        "latency_after": latency_after,
        # When the last push had reached every client, after it was sent (nan: some never got it).
        "final": max(final_arrivals) if len(final_arrivals) == len(result["clients"]) else math.nan,
    }


def storm(args) -> list[Figure]:
    part = "storm"
    redis = RedisServer().start()
    daphne = load = broadcaster = None
    result_file = Path(tempfile.mkdtemp(prefix="bench-delivery-")) / "storm.json"
    try:
        env = project_env(redis.url, LOG_LEVEL=args.log_level)
        daphne = listening_daphne(env=env, backlog=args.storm_backlog, args=DAPHNE_ARGS).start()
        url = daphne.ws_url + "/ws/"
        broadcaster = Broadcaster(env, args.storm_rate)
        began = time.monotonic()
        load = Piped(["storm", url, "--clients", str(args.storm_clients), "--result", str(result_file)])
        ready = load.expect("READY", 300)
        print(
            f"{part}: {ready[1]}/{args.storm_clients} clients connected in {time.monotonic() - began:.1f} s "
            f"({ready[2]} failed); {args.storm_rate:g} broadcasts a second",
            flush=True,
        )
        pids = (daphne.process.pid, load.process.pid, broadcaster.process.pid)
        cpu_before, wall_before = [cpu_seconds(pid) for pid in pids], time.monotonic()
        time.sleep(args.storm_settle)
        wall = time.monotonic() - wall_before
        steady_cpu = [
            100 * (cpu_seconds(pid) - used) / wall for pid, used in zip(pids, cpu_before, strict=True)
        ]
        counters_before = listen_counters()
        terminated = time.monotonic()
        daphne.stop()  # SIGTERM: every client gets 1001
        exited = time.monotonic()
        daphne.start()
        listening = time.monotonic()
        load.send("GO")
        back = load.expect("BACK", 300)
        counters_after = listen_counters()
        print(
            f"{part}: Daphne exited {exited - terminated:.1f} s after SIGTERM, listened again "
            f"{listening - exited:.1f} s later; {back[1]} clients back ({back[2]} never) in {back[3]} s",
            flush=True,
        )
        back_at = time.monotonic()
        time.sleep(args.storm_settle)
        broadcaster.finish()
        # The load waits (at most a minute) until every client has the last push, then closes.
        load.send(f"STOP {max((position for position, _, _ in broadcaster.sent), default=0)}")
        load.wait(120)
        result = json.loads(result_file.read_text())
        if not broadcaster.sent:
            raise RuntimeError(f"the broadcaster sent nothing ({len(broadcaster.refused)} refused)")
    finally:
        stop_all(load, broadcaster, daphne, redis)
        shutil.rmtree(result_file.parent, ignore_errors=True)
    print_notes(part, [daphne])
    for line in broadcaster.refused[:3]:
        print(f"  {part}: {line}", flush=True)

    counts = storm_counts(result, broadcaster.sent, terminated, back_at)
    caught, not_caught, retried = counts["caught"], counts["not_caught"], counts["retried"]
    sent = broadcaster.sent
    overflows = counters_after["ListenOverflows"] - counters_before["ListenOverflows"]
    drops = counters_after["ListenDrops"] - counters_before["ListenDrops"]
    all_back = max(caught) if caught and not not_caught else float("nan")
    backlog = backlog_name(args.storm_backlog)
    return [
        info(part, f"clients ({backlog}), broadcasts sent", f"{args.storm_clients:,}, {len(sent)}"),
        zero(part, "broadcasts refused", len(broadcaster.refused)),
        info(
            part,
            "Daphne: SIGTERM → exited → listening again (s)",
            f"{exited - terminated:.1f} → {listening - exited:.1f}",
        ),
        Figure(
            part,
            "all back and caught up, s after it listens again",
            f"{all_back:.2f}" if all_back == all_back else f"{not_caught} never",
            "≤ 5",
            all_back == all_back and all_back <= 5,
        ),
        info(
            part,
            "per client back and caught up p50 / p99 (s)",
            f"{percentile(caught, 50):.2f} / {percentile(caught, 99):.2f}",
        ),
        info(
            part,
            "all back and caught up, s after SIGTERM",
            f"{all_back + listening - terminated:.2f}" if all_back == all_back else "-",
        ),
        info(
            part,
            "CPU % of a core before the restart: Daphne / load / broadcaster",
            " / ".join(f"{used:.0f}" for used in steady_cpu),
        ),
        info(
            part,
            "live push latency before the restart p50 / p99 ms",
            p50_p99(counts["latency_before"]),
        ),
        info(
            part,
            "live push latency once all are back p50 / p99 ms",
            p50_p99(counts["latency_after"]),
        ),
        info(
            part,
            "last push reached every client, s after it was sent",
            f"{counts['final']:.2f}",
        ),
        zero(part, "handshake failures (first connect + storm attempts)", counts["handshake_failures"]),
        zero(part, "connections with no welcome or resumed in 30 s", counts["not_ready"]),
        info(part, "clients that needed more than one attempt", str(retried)),
        zero(part, "clients never caught up", not_caught),
        zero(part, "pushes missed (client deliveries)", counts["missed"]),
        zero(part, "duplicates", counts["duplicates"]),
        zero(part, "out-of-order", counts["out_of_order"]),
        Figure(
            part,
            "kernel listen overflows / drops during the storm",
            f"{overflows} / {drops}",
            "0",
            overflows == 0,
        ),
    ]


# --- postgres ----------------------------------------------------------------------------


def cycle_counts(clients: list, sent: list[tuple[int, float, float]]) -> dict:
    """Count what the cycle load's sessions (delivery_load.Session.record) got against what was sent.

    Missed: a push after the client's first welcome and up to its last welcome's last_broadcast
    (the final resume replays all of those), or older than the newest it got, that it never got.
    Late: a push appended after a session's welcome and done GRACE before its close that came
    only on a later connection (the server was that far behind; the replay made up for it).
    """
    sent = sorted(sent, key=lambda item: item[2])
    done_times = [done for _, _, done in sent]
    welcome, replay, errors = [], [], Counter()
    sessions_total = truncated = duplicates = out_of_order = missed = late = clients_missed = 0
    for sessions in clients:
        ids: list[int] = []
        start = last_position = None
        expected_live: list[tuple[set[int], list[int]]] = []  # (got in the session, sent meanwhile)
        for (
            started,
            welcome_at,
            resumed_at,
            after,
            last,
            _,
            was_truncated,
            closed_at,
            got,
            _,
            error,
            *_,
        ) in sessions:
            sessions_total += 1
            ids += got
            if error:
                errors[error.split(":")[0]] += 1
            if welcome_at is None:
                continue
            welcome.append(welcome_at - started)
            last_position = last  # where the log stood when it joined: the replay goes up to it
            if start is None:
                start = after if after is not None else last
            if after is not None and resumed_at is not None:
                replay.append(resumed_at - started)
                truncated += bool(was_truncated)
            if closed_at is not None:
                low = bisect.bisect_left(done_times, welcome_at)
                high = bisect.bisect_right(done_times, closed_at - GRACE)
                meanwhile = [position for position, before, _ in sent[low:high] if before >= welcome_at]
                expected_live.append((set(got), meanwhile))
        have = set(ids)
        dup, ooo = faults(ids)
        duplicates, out_of_order = duplicates + dup, out_of_order + ooo
        missing: set[int] = set()
        if start is not None:
            newest = max([*ids, last_position or 0])
            missing = {
                position for position, _, _ in sent if start < position <= newest and position not in have
            }
        late += sum(
            1
            for got, meanwhile in expected_live
            for position in meanwhile
            if position not in got and position in have
        )
        missed += len(missing)
        clients_missed += bool(missing)
    return {
        "errors": errors,
        "welcome": welcome,
        "replay": replay,
        "sessions": sessions_total,
        "truncated": truncated,
        "clients_missed": clients_missed,
        "missed": missed,
        "late": late,
        "duplicates": duplicates,
        "out_of_order": out_of_order,
    }


def postgres_admin():
    """Return an autocommit connection to PostgreSQL on 127.0.0.1:5432 as postgres and its URL, or why not."""
    try:
        import psycopg
    except ImportError:
        return None, None, "psycopg is not installed"
    reasons = []
    for url in POSTGRES_URLS:
        try:
            return psycopg.connect(url, autocommit=True, connect_timeout=3), url, None
        except Exception as error:
            reasons.append(f"{url.split('@')[0].split('//')[1].split(':')[0]}: {str(error).strip()[:120]}")
    return None, None, "PostgreSQL does not answer on 127.0.0.1:5432 (" + "; ".join(reasons) + ")"


def postgres(args) -> list[Figure]:
    part = "postgres"
    admin, admin_url, reason = postgres_admin()
    if admin is None:
        print(f"{part}: skipped: {reason}", flush=True)
        return [info(part, "skipped", reason)]
    name = f"echo_bench_{secrets.token_hex(4)}"
    redis = broadcaster = load = None
    daphnes: list[DaphneServer] = []
    result_file = Path(tempfile.mkdtemp(prefix="bench-delivery-")) / "cycle.json"
    try:
        admin.execute(f'CREATE DATABASE "{name}"')
        database_url = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgres://") + f"/{name}"
        redis = RedisServer().start()
        env = project_env(redis.url, LOG_LEVEL=args.log_level, DATABASE_URL=database_url)
        daphnes = [
            listening_daphne(env=env, backlog=args.postgres_backlog, args=DAPHNE_ARGS).start()
            for _ in range(2)
        ]
        print(
            f"{part}: database {name} migrated; 2 Daphnes, {args.postgres_clients} clients each, "
            f"{args.postgres_seconds:g} s, {args.postgres_rate:g} broadcasts a second",
            flush=True,
        )
        broadcaster = Broadcaster(env, args.postgres_rate)
        urls = [daphne.ws_url + "/ws/" for daphne in daphnes]
        load = Piped(
            [
                "cycle",
                *urls,
                "--clients",
                str(args.postgres_clients),
                "--seconds",
                str(args.postgres_seconds),
                "--hold",
                str(args.postgres_hold),
                "--result",
                str(result_file),
            ]
        )
        counters_before = listen_counters()
        load.wait(args.postgres_seconds + 120)
        counters_after = listen_counters()
        broadcaster.finish()
        result = json.loads(result_file.read_text())
        if not broadcaster.sent:
            raise RuntimeError(f"the broadcaster sent nothing ({len(broadcaster.refused)} refused)")
    finally:
        stop_all(load, broadcaster, *daphnes, redis)
        shutil.rmtree(result_file.parent, ignore_errors=True)
        try:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            print(f"{part}: database {name} dropped", flush=True)
        finally:
            admin.close()
    print_notes(part, daphnes)
    for line in broadcaster.refused[:3]:
        print(f"  {part}: {line}", flush=True)

    counts = cycle_counts(result["clients"], broadcaster.sent)
    errors = counts["errors"]
    for kind, count in errors.most_common():
        print(f"  {part}: {count} sessions failed: {kind}", flush=True)
    return [
        info(part, "sessions / broadcasts sent", f"{counts['sessions']:,} / {len(broadcaster.sent)}"),
        zero(part, "broadcasts refused", len(broadcaster.refused)),
        info(part, "welcome p50 / p99 ms", p50_p99(counts["welcome"])),
        info(part, "replay (resumed) p50 / p99 ms", p50_p99(counts["replay"])),
        zero(part, "failed sessions (handshake, welcome or resumed)", sum(errors.values())),
        info(
            part,
            f"kernel listen overflows / drops ({backlog_name(args.postgres_backlog)})",
            " / ".join(
                str(counters_after[name] - counters_before[name])
                for name in ("ListenOverflows", "ListenDrops")
            ),
        ),
        zero(part, "truncated replays", counts["truncated"]),
        zero(
            part, f"clients that missed a push ({len(result['clients'])} clients)", counts["clients_missed"]
        ),
        zero(part, "pushes missed (client deliveries)", counts["missed"]),
        info(
            part,
            f"pushes sent while connected that came only on a later connection (>{GRACE} s late)",
            f"{counts['late']:,}",
        ),
        zero(part, "duplicates", counts["duplicates"]),
        zero(part, "out-of-order", counts["out_of_order"]),
    ]


# --- the table -----------------------------------------------------------------------------


def print_table(figures: list[Figure]) -> None:
    width = max(len(f"{figure.part}: {figure.name}") for figure in figures) + 2
    value_width = max(12, *(len(figure.value) for figure in figures)) + 2
    print()
    print(f"{'figure':<{width}}{'value':>{value_width}}{'goal':>8}   met?")
    print("-" * (width + value_width + 15))
    for figure in figures:
        met = "-" if figure.met is None else ("yes" if figure.met else "NO")
        print(
            f"{f'{figure.part}: {figure.name}':<{width}}{figure.value:>{value_width}}{figure.goal:>8}   {met}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", action="append", choices=PARTS, help="run only this part (repeatable)")
    parser.add_argument("--log-level", default="WARNING", help="the Daphnes' LOG_LEVEL (their logs: /tmp)")
    parser.add_argument("--order-clients", type=int, default=20, help="per Daphne")
    parser.add_argument("--order-senders", type=int, default=8)
    parser.add_argument("--order-rounds", type=int, default=3)
    parser.add_argument("--partition-clients", type=int, default=20, help="per Daphne")
    parser.add_argument("--partition-broadcasts", type=int, default=8)
    parser.add_argument("--partition-interval", type=float, default=0.75)
    parser.add_argument("--cut", type=float, default=6.0, help="seconds the link is cut (at least)")
    parser.add_argument("--storm-clients", type=int, default=2000)
    parser.add_argument("--storm-rate", type=float, default=5.0, help="broadcasts a second")
    parser.add_argument("--storm-backlog", type=int, default=2048, help="0: Daphne's -b/-p (backlog 50)")
    parser.add_argument(
        "--storm-settle", type=float, default=3.0, help="seconds of broadcasts before and after"
    )
    parser.add_argument("--postgres-clients", type=int, default=500, help="per Daphne")
    parser.add_argument("--postgres-seconds", type=float, default=30.0)
    parser.add_argument("--postgres-rate", type=float, default=5.0, help="broadcasts a second")
    parser.add_argument("--postgres-hold", type=float, default=1.0, help="seconds a connection is held")
    parser.add_argument("--postgres-backlog", type=int, default=2048, help="listen backlog; 0: -b/-p (50)")
    args = parser.parse_args()
    raise_file_limit()
    began = time.monotonic()
    runs = {
        "order": lambda: asyncio.run(order(args)),
        "partition": lambda: asyncio.run(partition(args)),
        "storm": lambda: storm(args),
        "postgres": lambda: postgres(args),
    }
    figures: list[Figure] = []
    for name in PARTS:
        if args.only and name not in args.only:
            continue
        print(f"--- {name}", flush=True)
        part_began = time.monotonic()
        try:
            figures += runs[name]()
        except Exception as error:
            print(f"{name}: failed: {type(error).__name__}: {error}", flush=True)
            figures.append(Figure(name, "part failed", type(error).__name__, "", False, correctness=True))
        print(f"{name}: took {time.monotonic() - part_began:.0f} s", flush=True)
    print_table(figures)
    failing = [figure for figure in figures if figure.correctness and not figure.met]
    print(
        f"took {time.monotonic() - began:.0f} s; "
        + (f"{len(failing)} correctness figures not 0" if failing else "every correctness figure is 0")
    )
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
