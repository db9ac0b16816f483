"""The contract, against a real Daphne process and a real redis-server, with real clients."""

import asyncio
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.servers import ROOT

LIMIT = 1024 * 1024  # settings.WEBSOCKET_MAX_MESSAGE_SIZE's default


def connect(daphne, path: str = "/ws/", **options):
    return websockets.connect(daphne.ws_url + path, max_size=None, open_timeout=30, **options)


async def test_text_gets_the_greeting_and_binary_comes_back(daphne):
    """ws/ answers text with the greeting, unicode intact, and echoes binary as binary."""
    async with connect(daphne) as ws:
        await ws.send("héllo ✓ 🙂")
        assert await ws.recv() == "Server: Hello. You said: héllo ✓ 🙂"
        await ws.send(b"\x00\x01\xfe\xff")
        assert await ws.recv() == b"\x00\x01\xfe\xff"


@pytest.mark.parametrize(
    "message",
    ["", b"", "tëxt", b"\x00bin", "x" * LIMIT, b"\x07" * LIMIT],
    ids=["empty-text", "empty-binary", "text", "binary", "text-at-limit", "binary-at-limit"],
)
async def test_raw_echo_is_exact_up_to_the_limit(daphne, message):
    """ws/raw/ sends back exactly what came, of the same kind, the empty message and 1 MiB included."""
    async with connect(daphne, "/ws/raw/") as ws:
        await ws.send(message)
        assert await asyncio.wait_for(ws.recv(), 10) == message


async def test_message_over_the_limit_gets_close_1009(daphne):
    """One byte over the configured limit: the server sends a 1009 close frame, not a reset."""
    async with connect(daphne, "/ws/raw/") as ws:
        await ws.send(b"\x00" * (LIMIT + 1))
        await asyncio.wait_for(ws.wait_closed(), 10)
    assert ws.protocol.close_rcvd is not None, "no close frame came from the server"
    assert ws.protocol.close_rcvd.code == 1009


@pytest.mark.parametrize("code, reason", [(1000, ""), (4321, "bye now"), (1001, "going")])
async def test_client_close_code_is_echoed(daphne, code, reason):
    """The server's close frame carries the client's close code and reason."""
    async with connect(daphne) as ws:
        await ws.close(code=code, reason=reason)
    assert ws.protocol.close_rcvd is not None
    assert (ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason) == (code, reason)


@pytest.mark.parametrize("path", ["/ws/", "/ws/raw/"])
def test_plain_http_get_is_400_with_a_one_line_body(daphne, path):
    """A browser or curl fetching a WebSocket URL learns that an upgrade is required."""
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(daphne.http_url + path, timeout=5)
    body = caught.value.read().decode()
    assert caught.value.code == 400
    assert body.count("\n") == 1 and "WebSocket upgrade is required" in body


async def test_foreign_origin_is_refused_with_403_and_a_log_line(daphne):
    """A browser Origin that matches no allowed host gets 403, and the log says which and why."""
    with pytest.raises(InvalidStatus) as caught:
        async with connect(daphne, origin="http://evil.example"):
            pass
    assert caught.value.response.status_code == 403
    log = daphne.wait_for_log("Origin 'http://evil.example'")
    line = next(line for line in log.splitlines() if "Origin 'http://evil.example'" in line)
    assert "handshake rejected" in line and "ALLOWED_HOSTS" in line and "peer=127.0.0.1:" in line


@pytest.mark.parametrize("origin", [None, "http://127.0.0.1:8000", "http://localhost"])
async def test_allowed_or_absent_origin_is_accepted(daphne, origin):
    """Our own pages' Origin and a client that sends none (scripts, tools) both connect."""
    async with connect(daphne, origin=origin) as ws:
        await ws.send("ok")
        assert await ws.recv() == "Server: Hello. You said: ok"


def test_walkthrough_raw_handshake_gets_101_with_the_expected_accept_key(daphne):
    """The raw handshake from the walkthrough, byte for byte, is answered as RFC 6455 says."""
    request = (
        "GET /ws/ HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{daphne.port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        "Sec-WebSocket-Key: L4kHN+1Bx7zKbxsDbqgzHw==\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", daphne.port), timeout=5) as sock:
        sock.sendall(request)
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = sock.recv(4096)
            assert chunk, f"connection closed before the response ended: {response!r}"
            response += chunk
    head = response.split(b"\r\n\r\n")[0].decode()
    assert head.startswith("HTTP/1.1 101 ")
    assert re.search(r"(?im)^Sec-WebSocket-Accept: CTPN8jCb3BUjBjBtdjwSQCytuBo=$", head)


def test_admin_is_served_styled_with_debug_off(daphne):
    """/admin/ renders under Daphne with DJANGO_DEBUG=0, and its stylesheet is served."""
    with urllib.request.urlopen(daphne.http_url + "/admin/login/", timeout=5) as response:
        html = response.read().decode()
    stylesheets = re.findall(r'<link rel="stylesheet" href="([^"]+)"', html)
    assert any("admin/css/base" in href for href in stylesheets), stylesheets
    for href in stylesheets:
        with urllib.request.urlopen(daphne.http_url + href, timeout=5) as css:
            assert css.status == 200
            assert css.headers["Content-Type"].startswith("text/css")
            assert len(css.read()) > 100


def test_index_page_is_served(daphne):
    """/ shows the page with its text box; its script and the client that script runs on are served."""
    with urllib.request.urlopen(daphne.http_url + "/", timeout=5) as response:
        html = response.read().decode()
    assert '<input id="message"' in html
    script = re.search(r'<script type="module" src="([^"]+)"', html).group(1)
    with urllib.request.urlopen(daphne.http_url + script, timeout=5) as js:
        assert b"client.js" in js.read()  # the page runs on the embeddable client
    client = re.search(r'data-client="([^"]+)"', html).group(1)
    with urllib.request.urlopen(daphne.http_url + client, timeout=5) as js:
        assert b"new WebSocket(" in js.read()


async def test_connection_life_and_messages_are_logged(daphne):
    """Connected, received, sent and closed (with its code) each log a line with the id and peer."""
    async with connect(daphne) as ws:
        port = ws.local_address[1]
        await ws.send("log me")
        await ws.recv()
        await ws.close(code=4100)
    peer = f"peer=127.0.0.1:{port}"
    log = daphne.wait_for_log(f"{peer} closed code=4100")
    lines = [line for line in log.splitlines() if peer in line]
    assert [line.split(peer)[1].strip().split()[0] for line in lines] == [
        "connected",
        "received",
        "sent",
        "closed",
    ]
    assert len({line.split(peer)[0].split()[-1] for line in lines}) == 1, "one connection id throughout"
    assert "log me" not in "\n".join(lines)


async def test_idle_client_survives_well_past_the_redis_read_timeout(fresh_daphne):
    """A client silent for 8 s (redis-py 8's default socket timeout is 5 s) still echoes and gets pushes."""
    async with connect(fresh_daphne) as ws:
        await asyncio.sleep(8)
        await ws.send("still here")
        assert await ws.recv() == "Server: Hello. You said: still here"
        command = [sys.executable, "manage.py", "broadcast", "push"]
        sent = await asyncio.to_thread(
            subprocess.run, command, cwd=ROOT, env=fresh_daphne.env, capture_output=True
        )
        assert sent.returncode == 0, sent.stderr
        assert await asyncio.wait_for(ws.recv(), 5) == "Server broadcast: push"
    assert ws.protocol.close_rcvd.code == 1000


async def test_300_simultaneous_connects_all_succeed(fresh_daphne):
    """300 handshakes at once all get 101 and an echo (stock, a pool of 100 raised MaxConnectionsError)."""
    started = time.monotonic()

    async def one(n: int) -> str:
        async with connect(fresh_daphne) as ws:
            await ws.send(f"n{n}")
            return await asyncio.wait_for(ws.recv(), 30)

    replies = await asyncio.gather(*(one(n) for n in range(300)), return_exceptions=True)
    failures = [reply for reply in replies if isinstance(reply, BaseException)]
    assert not failures, f"{len(failures)} of 300 failed, first: {failures[0]!r}"
    assert replies == [f"Server: Hello. You said: n{n}" for n in range(300)]
    assert time.monotonic() - started < 60
    assert "MaxConnectionsError" not in fresh_daphne.log()


async def test_unknown_websocket_path_is_refused_with_a_log_line(daphne):
    """A handshake for a path with no WebSocket route gets 403, and the log names the path."""
    with pytest.raises(InvalidStatus) as caught:
        async with connect(daphne, "/ws/nowhere/"):
            pass
    assert caught.value.response.status_code == 403
    body = b"No WebSocket route for /ws/nowhere/: this server has /ws/ and /ws/raw/.\n"
    assert caught.value.response.body == body
    daphne.wait_for_log("no WebSocket route for path '/ws/nowhere/'")
    assert "Traceback" not in daphne.log()
