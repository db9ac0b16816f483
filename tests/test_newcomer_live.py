"""What a newcomer trips on in the first ten minutes, against a live Daphne: the walkthrough's own URL
(``/ws``, no slash), the favicon every browser asks for, and /healthz probed through an outage."""

import asyncio
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import websockets

from tests.servers import ROOT, DaphneServer, RedisServer


def get(server: DaphneServer, path: str) -> tuple[int, dict, bytes]:
    """GET ``path`` without following redirects; return status, headers and body."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(server.http_url + path, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


@pytest.mark.parametrize("path", ["/ws", "/ws?group=red"])
async def test_the_walkthroughs_url_without_a_slash_echoes_and_gets_broadcasts(daphne, path):
    """``ws://host/ws`` (the walkthrough's client) is ``ws/``: greeting, binary echo, broadcasts."""
    async with websockets.connect(daphne.ws_url + path, open_timeout=30) as ws:
        await ws.send("hi")
        assert await asyncio.wait_for(ws.recv(), 5) == "Server: Hello. You said: hi"
        await ws.send(b"\x00\x01")
        assert await asyncio.wait_for(ws.recv(), 5) == b"\x00\x01"
        group = ["--group", "red"] if "group" in path else []
        command = [sys.executable, "manage.py", "broadcast", "to the slashless", *group]
        sent = subprocess.run(command, cwd=ROOT, env=daphne.env, capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        assert await asyncio.wait_for(ws.recv(), 5) == "Server broadcast: to the slashless"


async def test_raw_without_a_slash_is_the_exact_echo(daphne):
    """``/ws/raw`` echoes exactly, the empty message included, as ``/ws/raw/`` does."""
    async with websockets.connect(daphne.ws_url + "/ws/raw", open_timeout=30) as ws:
        for message in ("", "exact", b"", b"\xff"):
            await ws.send(message)
            assert await asyncio.wait_for(ws.recv(), 5) == message


@pytest.mark.parametrize("path", ["/ws", "/ws/raw", "/ws?group=red"])
def test_a_plain_get_without_the_slash_is_the_one_line_400_not_a_redirect(daphne, path):
    """A redirect is no use to a WebSocket client: ``GET /ws`` answers as ``GET /ws/`` does."""
    status, headers, body = get(daphne, path)
    assert status == 400, (status, headers.get("Location"))
    assert body.decode() == "This is a WebSocket endpoint: a WebSocket upgrade is required.\n"


def test_the_favicon_is_served(daphne):
    """``/favicon.ico``, which browsers fetch on a first visit, is an image, not a 404."""
    status, headers, body = get(daphne, "/favicon.ico")
    assert status == 200
    assert headers["Content-Type"].startswith("image/")
    assert body.startswith(b"<svg") and "max-age" in headers["Cache-Control"]


@pytest.fixture
def probed_daphne(start_daphne, own_redis: RedisServer) -> DaphneServer:
    return start_daphne(REDIS_URL=own_redis.url)


def healthz(server: DaphneServer) -> int:
    return get(server, "/healthz")[0]


def health_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if " echo.health " in line]


def test_healthz_logs_an_outage_once_not_once_per_probe(probed_daphne, own_redis):
    """A load balancer probing through a Redis outage: one line when it starts, one when it ends,
    and no ERROR per 503 (Django logs each as "Service Unavailable")."""
    assert healthz(probed_daphne) == 200
    own_redis.stop()
    assert [healthz(probed_daphne) for _ in range(6)] == [503] * 6
    own_redis.start()
    assert healthz(probed_daphne) == 200
    assert healthz(probed_daphne) == 200
    log = probed_daphne.log()
    assert "Service Unavailable" not in log
    lines = health_lines(log)
    assert len(lines) == 2, lines
    down, up = lines
    assert " WARNING echo.health " in down and "redis is down" in down, down
    assert " WARNING echo.health " in up and "redis is up again after" in up, up
    assert "database" not in " ".join(lines)
