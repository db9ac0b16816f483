"""The load generator: one measurement against one WebSocket URL, in a process of its own.

    python -m bench.load echo  URL [--clients 50] [--seconds 5] [--size 32]
    python -m bench.load churn URL [--workers 50] [--seconds 5]
    python -m bench.load idle  URL [--connections 10000] [--hold 60]

picows clients on uvloop, so that the load costs as little CPU as the machine allows (a handshake
the server reset counts as failed: picows itself reports it as open). Writes
one JSON object at the end, to stdout or to the --result file (a result of a few hundred KB
twice arrived cut short through the pipe). idle also prints "OPEN n" once every connection is
up, so that the caller can measure the server's memory then; progress goes to stderr.
"""

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import uvloop
from picows import WSCloseCode, WSListener, WSMsgType, WSTransport, ws_connect

from bench.environment import raise_file_limit


def reset_during_handshake(transport: WSTransport) -> bool:
    """Whether a connection picows reports as open was reset before the server's 101 came.

    picows 2.3 returns from ws_connect without an error when the server resets the connection
    during the handshake (Daphne does that to a handshake its application has not accepted
    within --websocket_connect_timeout, 5 s): no response, already disconnected, and no
    listener callback. Every caller of ws_connect checks this.
    """
    return transport.response is None or transport.is_disconnected


class EchoClient(WSListener):
    """Send a message, wait for its echo, send the next: a closed loop, timing each round trip."""

    def __init__(self, payload: bytes, stop_at: float, rtts: list[float], done: asyncio.Future) -> None:
        self.payload, self.stop_at, self.rtts, self.done = payload, stop_at, rtts, done
        self.sent_at = 0.0

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.send()

    def send(self) -> None:
        self.sent_at = time.perf_counter()
        self.transport.send(WSMsgType.TEXT, self.payload)

    def on_ws_frame(self, transport: WSTransport, frame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            return
        now = time.perf_counter()
        self.rtts.append(now - self.sent_at)
        if now < self.stop_at:
            self.send()
        else:
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()
            if not self.done.done():
                self.done.set_result(None)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.done.done():
            self.done.set_result(None)


class OneReply(WSListener):
    """Resolve a future with the first text frame."""

    def __init__(self, reply: asyncio.Future) -> None:
        self.reply = reply

    def on_ws_frame(self, transport: WSTransport, frame) -> None:
        if frame.msg_type == WSMsgType.TEXT and not self.reply.done():
            self.reply.set_result(frame.get_payload_as_bytes())

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.reply.done():
            self.reply.set_exception(ConnectionError("closed before the reply"))


class Holder(WSListener):
    """Hold a connection open and note whether it was dropped."""

    def __init__(self) -> None:
        self.dropped = False

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.dropped = True


async def echo(url: str, clients: int, seconds: float, size: int) -> dict:
    loop = asyncio.get_running_loop()
    rtts: list[float] = []
    stop_at = time.perf_counter() + seconds
    payload = b"x" * size
    done = [loop.create_future() for _ in range(clients)]
    started = time.perf_counter()
    transports = await asyncio.gather(
        *(ws_connect(lambda d=d: EchoClient(payload, stop_at, rtts, d), url) for d in done)
    )
    if any(reset_during_handshake(transport) for transport, _ in transports):
        raise ConnectionResetError("the server reset a connection during the handshake")
    await asyncio.wait_for(asyncio.gather(*done), seconds + 30)
    elapsed = time.perf_counter() - started
    for transport, _ in transports:
        transport.disconnect()
    return {"messages": len(rtts), "rate": len(rtts) / elapsed, "rtt_ms": [round(r * 1000, 4) for r in rtts]}


async def churn(url: str, workers: int, seconds: float) -> dict:
    loop = asyncio.get_running_loop()
    stop_at = time.perf_counter() + seconds
    counts, errors = [0] * workers, []

    async def worker(n: int) -> None:
        while time.perf_counter() < stop_at:
            reply = loop.create_future()
            try:
                transport, _ = await ws_connect(lambda reply=reply: OneReply(reply), url)
                if reset_during_handshake(transport):
                    raise ConnectionResetError("the server reset the connection during the handshake")
                transport.send(WSMsgType.TEXT, b"churn")
                await asyncio.wait_for(reply, 10)
                transport.send_close(WSCloseCode.OK)
                transport.disconnect()
                await transport.wait_disconnected()
                counts[n] += 1
            except Exception as error:
                errors.append(repr(error))

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(workers)))
    elapsed = time.perf_counter() - started
    return {
        "connections": sum(counts),
        "rate": sum(counts) / elapsed,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


async def idle(url: str, connections: int, hold: float) -> dict:
    holders: list[tuple[WSTransport, Holder]] = []
    failed = 0
    batch = 200
    for start in range(0, connections, batch):
        results = await asyncio.gather(
            *(
                ws_connect(Holder, url, websocket_handshake_timeout=30)
                for _ in range(min(batch, connections - start))
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException) or reset_during_handshake(result[0]):
                failed += 1
            else:
                holders.append(result)
        print(f"  open {len(holders)}/{connections}", file=sys.stderr, flush=True)
    print(f"OPEN {len(holders)}", flush=True)
    await asyncio.sleep(hold)
    dropped = sum(holder.dropped for _, holder in holders)
    for transport, _ in holders:
        transport.disconnect()
    return {"opened": len(holders), "failed": failed, "dropped": dropped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["echo", "churn", "idle"])
    parser.add_argument("url")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--hold", type=float, default=60)
    parser.add_argument("--result", type=Path, help="write the JSON result to this file, not stdout")
    args = parser.parse_args()
    raise_file_limit()
    if args.mode == "echo":
        run = echo(args.url, args.clients, args.seconds, args.size)
    elif args.mode == "churn":
        run = churn(args.url, args.workers, args.seconds)
    else:
        run = idle(args.url, args.connections, args.hold)
    result = json.dumps(uvloop.run(run))
    if args.result is None:
        print(result, flush=True)
    else:
        args.result.write_text(result)


if __name__ == "__main__":
    main()
