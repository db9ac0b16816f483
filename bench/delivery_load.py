"""The load of bench.delivery, in processes of their own: echo.json clients that keep every push they
get, and a broadcaster.

    python -m bench.delivery_load storm URL [--clients 2000] --result FILE
    python -m bench.delivery_load cycle URL [URL ...] [--clients 500] [--seconds 30] [--hold 1] --result FILE
    python -m bench.delivery_load broadcaster [--rate 5] [--seconds 300]

storm: CLIENTS clients connect to URL (200 handshakes at a time) and print "READY <open> <failed>".
Each keeps the position of the last push it got (the welcome's last_broadcast until it gets
one). On the line "GO" on stdin (sent once the server has been restarted and listens again),
all of them reconnect at once with ?after=<position>, retrying a failed handshake (at most 5
attempts); "BACK <back> <never> <seconds>" once every one has its `resumed` envelope. On
"STOP <position>" they wait (at most 60 s) until every one has the push at that position (the
last sent), close, and the result (every push each got, with arrival times) goes to FILE.

cycle: CLIENTS clients per URL connect, with ?after=<position> once they have one, wait for the
welcome (and the resumed envelope), hold the connection HOLD s (±20%), close, and again, for
SECONDS; then each resumes one last time (and closes at once), so that it has by the end every
push sent before that; every session goes to FILE.

broadcaster: with the project's settings from the environment (DJANGO_SETTINGS_MODULE,
REDIS_URL, DATABASE_URL), sends RATE broadcasts a second through services.broadcast_send and
prints "SENT <position> <monotonic before> <monotonic after>" (or "REFUSED <monotonic> <why>")
for each, until a line (or end of file) on stdin, or SECONDS.

picows clients on uvloop, as bench/load.py, so that thousands cost the machine little. Times are
time.monotonic(), which every process on the machine shares.
"""

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import threading
import time
from pathlib import Path

import uvloop
from picows import WSCloseCode, WSListener, WSMsgType, WSTransport, ws_connect

from bench.environment import raise_file_limit
from bench.load import reset_during_handshake

HANDSHAKE_TIMEOUT = 30.0  # s for the HTTP upgrade
READY_TIMEOUT = 30.0  # s for the welcome (and resumed) after it
BATCH = 200  # handshakes in flight at once while the crowd first connects
ATTEMPTS = 5  # handshakes a client tries in the storm before giving up
RETRY_PAUSE = 0.5  # s between them
STORM_TIMEOUT = 120.0  # s for the whole storm
COMMAND_TIMEOUT = 600.0  # s to wait for a command on stdin
DRAIN_TIMEOUT = 60.0  # s for every client to get the last push, once told which it is
MAX_CYCLES = 10_000  # sessions of one cycle client, whatever the time
HEADERS = {"Sec-WebSocket-Protocol": "echo.json"}


def now() -> float:
    return round(time.monotonic(), 4)


class Session:
    """One connection: when it started, got its welcome and resumed envelope, closed, what it got."""

    def __init__(self, after: int | None) -> None:
        self.after = after
        self.started = now()
        self.open_at: float | None = None  # when the handshake's 101 came
        self.welcome_at: float | None = None
        self.resumed_at: float | None = None
        self.last_broadcast: int | None = None  # the welcome's
        self.replayed: int | None = None
        self.truncated: bool | None = None
        self.closed_at: float | None = None  # when we closed, or noticed the server had
        self.close_code: int | None = None  # the close code the server sent, if any
        self.ours = False  # we closed it (else the server did, or the connection broke)
        self.connection: str | None = None  # the server's id for it (the welcome's), as in its log
        self.ids: list[int] = []
        self.times: list[float] = []
        self.error: str | None = None
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self.gone: asyncio.Future = asyncio.get_running_loop().create_future()

    def record(self) -> list:
        return [
            self.started,
            self.welcome_at,
            self.resumed_at,
            self.after,
            self.last_broadcast,
            self.replayed,
            self.truncated,
            self.closed_at,
            self.ids,
            self.times,
            self.error,
            self.close_code,
            self.open_at,
            self.ours,
            self.connection,
        ]


class Listener(WSListener):
    """Feed one session with what the server sends."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def on_ws_frame(self, transport: WSTransport, frame) -> None:
        session = self.session
        if frame.msg_type == WSMsgType.CLOSE:
            session.close_code = frame.get_close_code()
            return
        if frame.msg_type != WSMsgType.TEXT:
            return
        message = json.loads(frame.get_payload_as_bytes())
        kind = message.get("type")
        if kind == "broadcast":
            session.ids.append(message["id"])
            session.times.append(now())
        elif kind == "welcome":
            session.welcome_at = now()
            session.last_broadcast = message["last_broadcast"]
            session.connection = message.get("connection")
            if session.after is None and not session.ready.done():
                session.ready.set_result(None)
        elif kind == "resumed":
            session.resumed_at = now()
            session.replayed, session.truncated = message["replayed"], message["truncated"]
            if not session.ready.done():
                session.ready.set_result(None)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        session = self.session
        if session.closed_at is None:
            session.closed_at = now()
        if not session.ready.done():
            session.ready.set_exception(ConnectionError(f"closed before ready (code {session.close_code})"))
        if not session.gone.done():
            session.gone.set_result(None)


class Client:
    """One echo.json client and its sessions; ``position`` is the last push it has."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sessions: list[Session] = []
        self.position: int | None = None
        self.transport: WSTransport | None = None

    def update_position(self, session: Session) -> None:
        """Remember the newest push the session brought (or where the log stood at its welcome)."""
        if session.ids:
            self.position = max(max(session.ids), self.position or 0)
        elif self.position is None:
            self.position = session.last_broadcast

    async def open(self, after: int | None) -> Session:
        """Connect (with ?after= if given) and wait for the welcome, and the resumed envelope."""
        session = Session(after)
        self.sessions.append(session)
        url = self.url if after is None else f"{self.url}?after={after}"
        try:
            self.transport, _ = await ws_connect(
                lambda: Listener(session),
                url,
                extra_headers=HEADERS,
                websocket_handshake_timeout=HANDSHAKE_TIMEOUT,
            )
            if reset_during_handshake(self.transport):
                raise ConnectionResetError("the server reset the connection during the handshake")
            session.open_at = now()
        except Exception as error:
            session.error = f"handshake: {type(error).__name__}: {error}"[:200]
            session.closed_at = now()
            raise
        try:
            await asyncio.wait_for(session.ready, READY_TIMEOUT)
        except Exception as error:
            session.error = f"after the handshake: {type(error).__name__}: {error}"[:200]
            session.ours = not session.gone.done()
            self.transport.disconnect()
            self.update_position(session)
            raise
        return session

    async def close(self) -> None:
        """Close the current connection, if open, and wait (briefly) until it is gone."""
        if not self.sessions or self.transport is None:
            return
        session = self.sessions[-1]
        if not session.gone.done():
            session.closed_at = now()
            session.ours = True
            self.transport.send_close(WSCloseCode.OK)
            self.transport.disconnect()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(session.gone), 5)
        self.update_position(session)


async def command(expected: str) -> list[str]:
    """Wait for a line starting with the word ``expected`` on stdin; return its other words."""
    line = await asyncio.wait_for(asyncio.to_thread(sys.stdin.readline), COMMAND_TIMEOUT)
    words = line.split()
    if not words or words[0] != expected:
        raise RuntimeError(f"expected {expected!r} on stdin, got {line!r}")
    return words[1:]


def newest(client: Client) -> int:
    """The newest push the client has got, in any session."""
    return max((max(session.ids) for session in client.sessions if session.ids), default=0)


async def storm(url: str, count: int) -> dict:
    clients = [Client(url) for _ in range(count)]
    failed = 0
    for start in range(0, count, BATCH):
        batch = clients[start : start + BATCH]
        results = await asyncio.gather(*(client.open(None) for client in batch), return_exceptions=True)
        failed += sum(isinstance(result, BaseException) for result in results)
        print(f"  open {start + len(batch) - failed}/{count}", file=sys.stderr, flush=True)
    print(f"READY {count - failed} {failed}", flush=True)
    await command("GO")
    go = now()
    still_open = 0
    for client in clients:
        if client.sessions:
            session = client.sessions[-1]
            if session.error is None and not session.gone.done():
                still_open += 1  # the restart did not close it: close it ourselves
                await client.close()
            client.update_position(session)

    async def back(client: Client) -> bool:
        for attempt in range(ATTEMPTS):
            if time.monotonic() - go > STORM_TIMEOUT:
                break
            try:
                await client.open(client.position)
                return True
            except Exception:
                await asyncio.sleep(RETRY_PAUSE * (attempt + 1))
        return False

    outcomes = await asyncio.gather(*(back(client) for client in clients))
    print(f"BACK {sum(outcomes)} {count - sum(outcomes)} {time.monotonic() - go:.2f}", flush=True)
    (last,) = await command("STOP")
    # Every push sent must arrive before the clients close: wait (bounded) until all have the last.
    drain_deadline = time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < drain_deadline and any(newest(client) < int(last) for client in clients):
        await asyncio.sleep(0.1)
    drained = now()
    await asyncio.gather(*(client.close() for client in clients))
    return {
        "go": go,
        "drained": drained,
        "ready_failed": failed,
        "still_open_at_go": still_open,
        "clients": [[session.record() for session in client.sessions] for client in clients],
    }


async def cycle(urls: list[str], count: int, seconds: float, hold: float) -> dict:
    clients = [Client(url) for url in urls for _ in range(count)]
    began = time.monotonic()
    deadline = began + seconds

    async def run(client: Client) -> None:
        await asyncio.sleep(random.uniform(0, hold))  # spread the first handshakes over a hold
        for _ in range(MAX_CYCLES):
            if time.monotonic() >= deadline:
                break
            try:
                await client.open(client.position)
            except Exception:
                await asyncio.sleep(RETRY_PAUSE)
                continue
            await asyncio.sleep(random.uniform(0.8 * hold, 1.2 * hold))
            await client.close()
        # One last resume, so that what was sent while it was connected but arrived too late for
        # that connection is had by the end (a few attempts at most).
        for _ in range(ATTEMPTS):
            try:
                await client.open(client.position)
            except Exception:
                await asyncio.sleep(RETRY_PAUSE)
                continue
            await client.close()
            break

    async def progress() -> None:
        while time.monotonic() < deadline:
            await asyncio.sleep(5)
            sessions = sum(len(client.sessions) for client in clients)
            errors = sum(1 for client in clients for session in client.sessions if session.error)
            elapsed = time.monotonic() - began
            print(f"  {elapsed:.0f} s: {sessions} sessions, {errors} errors", file=sys.stderr, flush=True)

    reporter = asyncio.create_task(progress())
    await asyncio.gather(*(run(client) for client in clients))
    reporter.cancel()
    return {
        "urls": [client.url for client in clients],
        "clients": [[session.record() for session in client.sessions] for client in clients],
    }


def broadcaster(rate: float, seconds: float) -> None:
    """Send ``rate`` broadcasts a second through services.broadcast_send until told to stop."""
    import django

    django.setup()
    from echo import services

    stop = threading.Event()

    def wait_for_stop() -> None:
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=wait_for_stop, daemon=True).start()
    began = time.monotonic()
    for number in range(int(rate * seconds) + 1):
        due = began + number / rate
        if stop.wait(max(0.0, due - time.monotonic())):
            break
        before = now()
        try:
            broadcast = services.broadcast_send(text=f"delivery {os.getpid()} {number}")
        except services.BroadcastNotSent as error:
            print(f"REFUSED {before} {str(error)[:200]}", flush=True)
            continue
        print(f"SENT {broadcast.position} {before} {now()}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["storm", "cycle", "broadcaster"])
    parser.add_argument("urls", nargs="*")
    parser.add_argument("--clients", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--hold", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=5.0)
    parser.add_argument("--result", type=Path, help="write the JSON result to this file")
    args = parser.parse_args()
    raise_file_limit()
    if args.mode == "broadcaster":
        broadcaster(args.rate, args.seconds or 300)
        return
    if not args.urls or args.result is None:
        parser.error(f"{args.mode} needs a URL and --result")
    if args.mode == "storm":
        run = storm(args.urls[0], args.clients or 2000)
    else:
        run = cycle(args.urls, args.clients or 500, args.seconds or 30, args.hold)
    args.result.write_text(json.dumps(uvloop.run(run)))


if __name__ == "__main__":
    main()
