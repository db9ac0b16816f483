"""No client can take the server's memory or descriptors: project.daphne_limits, against a live Daphne."""

import asyncio
import contextlib
import re
import resource
import socket
import time
import urllib.request
from pathlib import Path

import pytest
import websockets

from tests.servers import non_reading_client
from tests.test_bad_input_live import frame


def metric(server, name: str) -> float:
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return float(re.search(rf"(?m)^{name} (\S+)$", text).group(1))


def test_a_ping_flood_that_never_reads_is_closed_and_memory_stays_flat(start_daphne):
    """Pongs count against WEBSOCKET_OUTBOUND_LIMIT: a client pinging without reading is closed.

    Stock, every ping queued a pong without bound: Daphne grew by 800 MiB in 50 s.
    """
    server = start_daphne(METRICS_PUBLIC="1", WEBSOCKET_RATE="0")
    before = server.rss()
    sock = non_reading_client(server.port, "/ws/raw/")
    ping = frame(0x9, b"p" * 125) * 64  # 64 pings (8.5 KB) a write
    sent, deadline = 0, time.monotonic() + 10
    with contextlib.suppress(OSError):  # the server stops reading, then aborts: the flood ends
        while sent < 200 * 2**20 and time.monotonic() < deadline:
            sock.sendall(ping)
            sent += len(ping)
    sock.close()
    grown = server.rss() - before
    log = server.wait_for_log("over WEBSOCKET_OUTBOUND_LIMIT", timeout=5)
    assert "closing ['127.0.0.1'" in log
    assert metric(server, "echo_slow_client_closes_total") == 1.0
    assert grown < 40 * 2**20, f"Daphne grew by {grown / 2**20:.0f} MiB for {sent / 2**20:.0f} MiB of pings"


async def test_past_the_per_address_cap_a_handshake_gets_503_and_one_warning(start_daphne):
    """WEBSOCKET_MAX_PER_ADDRESS WebSockets from one address, then 503, logged at most once a second."""
    server = start_daphne(WEBSOCKET_MAX_PER_ADDRESS="3")
    held = [await websockets.connect(server.ws_url + "/ws/") for _ in range(3)]
    for _ in range(5):
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(server.ws_url + "/ws/")
        assert refused.value.response.status_code == 503
    log = server.wait_for_log("handshake refused with 503")
    lines = [line for line in log.splitlines() if "handshake refused with 503" in line]
    assert len(lines) == 1, lines
    assert "127.0.0.1 holds 3 WebSockets, the limit per address (WEBSOCKET_MAX_PER_ADDRESS)" in lines[0]
    await held[0].close()
    await asyncio.sleep(0.3)
    async with websockets.connect(server.ws_url + "/ws/") as again:  # a closed one frees its place
        await again.send("hi")
        assert await again.recv() == "Server: Hello. You said: hi"
    for ws in held[1:]:
        await ws.close()


async def test_past_the_process_cap_a_handshake_gets_503(start_daphne):
    """WEBSOCKET_MAX_CONNECTIONS bounds the WebSockets of one process, whatever their addresses."""
    server = start_daphne(WEBSOCKET_MAX_CONNECTIONS="2", WEBSOCKET_MAX_PER_ADDRESS="0")
    async with websockets.connect(server.ws_url + "/ws/"), websockets.connect(server.ws_url + "/ws/raw/"):
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(server.ws_url + "/ws/")
        assert refused.value.response.status_code == 503
    assert "its limit (WEBSOCKET_MAX_CONNECTIONS)" in server.wait_for_log("handshake refused with 503")


def test_daphne_raises_its_open_file_limit_and_caps_websockets_below_it(start_daphne):
    """The soft descriptor limit is raised to the hard one, and the default cap leaves a reserve."""
    soft_before, hard_before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard_before), hard_before))  # Daphne inherits it
    try:
        server = start_daphne()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft_before, hard_before))
    limits = Path(f"/proc/{server.process.pid}/limits").read_text()
    soft, hard = re.search(r"Max open files\s+(\d+)\s+(\d+)", limits).groups()
    assert soft == hard
    line = server.wait_for_log("connection limits:")
    cap = int(re.search(r"connection limits: (\d+) WebSockets per process", line).group(1))
    assert 0 < cap < int(soft)


def test_a_connection_that_fails_its_handshake_leaves_no_count_behind(start_daphne):
    """Handshakes that fail before Daphne sees them (a bad key) do not use up the address's places."""
    server = start_daphne(WEBSOCKET_MAX_PER_ADDRESS="2")
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(
                b"GET /ws/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: nonsense\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            assert sock.recv(4096).startswith(b"HTTP/1.1 400")

    async def two_echo() -> None:
        url = server.ws_url + "/ws/"
        async with websockets.connect(url), websockets.connect(url) as ws:
            await ws.send("still room")
            assert await ws.recv() == "Server: Hello. You said: still room"

    asyncio.run(two_echo())
