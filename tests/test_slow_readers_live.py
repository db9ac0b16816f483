"""A client that stops reading cannot grow the server's memory: it is closed with 1013."""

import asyncio
import datetime
import urllib.request

import websockets
from django.test import override_settings

from echo import pushlog
from tests.servers import non_reading_client

SIZE = 64 * 1024


def push(n: int) -> dict:
    now = datetime.datetime.now(datetime.UTC).isoformat()
    return {"text": f"{n:06d}" + "x" * SIZE, "group": "all", "sender": "test", "sent_at": now}


async def test_clients_that_stop_reading_are_closed_and_memory_stays_bounded(start_daphne, redis_server):
    """20 clients never read while 60 broadcasts of 64 KiB go out: each is closed, a reader gets all."""
    server = start_daphne(METRICS_PUBLIC="1")
    stuck = [non_reading_client(server.port) for _ in range(20)]
    async with websockets.connect(server.ws_url + "/ws/", max_size=None) as reader:
        await asyncio.sleep(0.3)
        before = server.rss()

        def send_all() -> None:
            with override_settings(REDIS_URL=redis_server.url):
                for n in range(60):
                    pushlog.append(push(n), floor=0)

        await asyncio.to_thread(send_all)
        received = 0
        while received < 60:
            frame = await asyncio.wait_for(reader.recv(), 10)
            assert frame.startswith(f"Server broadcast: {received:06d}")
            received += 1
        grown = server.rss() - before
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=5) as response:
        assert "echo_slow_client_closes_total 20.0" in response.read().decode()
    log = server.wait_for_log("with 1013", timeout=5)
    closed = [line for line in log.splitlines() if "over WEBSOCKET_OUTBOUND_LIMIT" in line]
    assert len(closed) == 20, closed[:3]
    # Unbounded, the 20 would hold 20 x 60 x 64 KiB = 75 MiB; bounded, about 20 x 0.3 MiB.
    assert grown < 40 * 1024 * 1024, f"Daphne grew by {grown / 2**20:.0f} MiB"
    for sock in stuck:
        sock.close()
