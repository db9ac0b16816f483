"""A Redis outage, for real: a private redis-server stopped and started under a live Daphne."""

import asyncio
import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import websockets

from tests.servers import ROOT, DaphneServer, RedisServer


@pytest.fixture
def outage_daphne(start_daphne, own_redis: RedisServer) -> DaphneServer:
    """A Daphne of its own on a Redis of its own, which the test stops and starts."""
    return start_daphne(REDIS_URL=own_redis.url)


def healthz(server: DaphneServer) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(server.http_url + "/healthz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def broadcast(server: DaphneServer, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "manage.py", "broadcast", *args]
    return subprocess.run(command, cwd=ROOT, env=server.env, capture_output=True, text=True, timeout=60)


async def echo(ws, text: str) -> str:
    await ws.send(text)
    return await asyncio.wait_for(ws.recv(), 5)


async def next_broadcast(ws, timeout: float = 5) -> str:
    while True:
        frame = await asyncio.wait_for(ws.recv(), timeout)
        if frame.startswith("Server broadcast: ") or '"type": "broadcast"' in frame:
            return frame


async def test_redis_outage_degrades_and_recovers_without_reconnecting(outage_daphne, own_redis):
    """Redis down: echo and new connections go on, /healthz says 503, the command fails clearly, one
    warning is logged. Redis back: the same open connections get broadcasts again, their groups intact."""
    url = outage_daphne.ws_url + "/ws/"
    async with (
        websockets.connect(url) as before,
        websockets.connect(url + "?group=red", subprotocols=["echo.json"]) as red,
    ):
        assert healthz(outage_daphne) == (200, {"status": "ok", "checks": {"database": "ok", "redis": "ok"}})
        own_redis.stop()

        for n in range(5):
            assert await echo(before, f"down {n}") == f"Server: Hello. You said: down {n}"
        async with websockets.connect(url, open_timeout=10) as during:
            assert await echo(during, "new") == "Server: Hello. You said: new"
        status, body = healthz(outage_daphne)
        assert status == 503 and body["status"] == "degraded"
        assert body["checks"] == {"database": "ok", "redis": "down"}  # no address for the public
        failed = broadcast(outage_daphne, "lost?")
        assert failed.returncode == 1, failed.stderr
        assert "is unreachable" in failed.stderr and "Traceback" not in failed.stderr, failed.stderr

        own_redis.start()
        log = outage_daphne.wait_for_log("is reachable again", timeout=15)
        warnings = [line for line in log.splitlines() if "is unreachable (" in line]
        parts = sorted(line.split(") for the ")[1].split(":")[0] for line in warnings)
        assert parts == ["channel layer", "push log"], f"one warning per part and outage: {warnings}"
        assert "Traceback" not in log

        sent = broadcast(outage_daphne, "back")
        assert sent.returncode == 0, sent.stderr
        assert await next_broadcast(before) == "Server broadcast: back"
        assert json.loads(await next_broadcast(red))["text"] == "back"
        sent = broadcast(outage_daphne, "red again", "--group", "red")
        assert sent.returncode == 0, sent.stderr
        envelope = json.loads(await next_broadcast(red))
        assert (envelope["type"], envelope["text"], envelope["group"]) == ("broadcast", "red again", "red")
        assert healthz(outage_daphne)[0] == 200


async def test_connection_opened_during_the_outage_gets_broadcasts_after_it(outage_daphne, own_redis):
    """A client that connected while Redis was down is subscribed once Redis is back."""
    own_redis.stop()
    async with websockets.connect(outage_daphne.ws_url + "/ws/?group=blue", open_timeout=10) as late:
        assert await echo(late, "hi") == "Server: Hello. You said: hi"
        own_redis.start()
        outage_daphne.wait_for_log("is reachable again", timeout=15)
        sent = broadcast(outage_daphne, "to blue", "--group", "blue")
        assert sent.returncode == 0, sent.stderr
        assert await next_broadcast(late) == "Server broadcast: to blue"
