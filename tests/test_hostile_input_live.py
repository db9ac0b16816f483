"""A hostile client against a live Daphne: every input gets an answer, and nothing is left behind."""

import asyncio
import json
import re
import sqlite3
import time
import urllib.request

import pytest
import redis
import websockets

from tests.servers import DaphneServer

LIMIT = 1024 * 1024  # WEBSOCKET_MAX_MESSAGE_SIZE, the default
GREETING = "Server: Hello. You said: "

HOSTILE_FRAMES = {
    "nested-1000-deep": '{"a":' * 1000 + "1" + "}" * 1000,
    "lone-surrogate-text": '{"type": "echo", "text": "\\ud800"}',
    "lone-surrogate-group": '{"type": "join", "group": "\\udcff"}',
    "huge-exponent": '{"type": "echo", "text": "x", "n": 1e999999}',
    "5000-digit-int": '{"type": "echo", "text": "x", "n": ' + "9" * 5000 + "}",
    "huge-type": '{"type": "' + "x" * 500_000 + '"}',
    "huge-group": '{"type": "join", "group": "' + "x" * 500_000 + '"}',
    "echo-reply-over-the-limit": '{"type": "echo", "text": "' + "x" * (LIMIT - 28) + '"}',
}


def connect(server, path: str = "/ws/", json_protocol: bool = False):
    return websockets.connect(
        server.ws_url + path, subprotocols=["echo.json"] if json_protocol else None, max_size=None
    )


async def next_envelope(ws) -> dict:
    """Return the next envelope that is not a presence count."""
    while (envelope := json.loads(await asyncio.wait_for(ws.recv(), 5)))["type"] == "presence":
        pass
    return envelope


@pytest.mark.parametrize("frame", HOSTILE_FRAMES.values(), ids=HOSTILE_FRAMES.keys())
async def test_hostile_json_frames_get_an_error_envelope_and_the_connection_stays(daphne, frame):
    """Each hostile echo.json frame gets an error envelope; the same connection still echoes."""
    async with connect(daphne, json_protocol=True) as ws:
        assert (await next_envelope(ws))["type"] == "welcome"
        await ws.send(frame)
        error = await next_envelope(ws)
        assert error["type"] == "error" and len(error["error"]) < 200, error
        await ws.send(json.dumps({"type": "echo", "text": "still here"}))
        assert await next_envelope(ws) == {"type": "echo", "text": GREETING + "still here"}


async def test_a_text_whose_reply_is_over_the_limit_gets_close_1009(daphne):
    """A ws/ text inside the limit whose greeting reply is not gets close 1009 naming the sizes."""
    async with connect(daphne) as ws:
        await ws.send("x" * (LIMIT - 24))
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == 1009
    assert ws.close_reason == f"a message of {LIMIT + 1} bytes to send is over the limit of {LIMIT} bytes"


@pytest.mark.parametrize("after", ["99999999999999999999", "1" + "0" * 5000, "²"])
async def test_an_impossible_after_id_gets_close_1008(daphne, after):
    """?after= past any broadcast id the database can hold is refused with 1008 and a reason."""
    async with connect(daphne, f"/ws/?after={after}") as ws:
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == 1008 and ws.close_reason.startswith("invalid after ")


def metric(server, name: str) -> float:
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return float(re.search(rf"^{name} (\S+)$", text, re.MULTILINE).group(1))


def rows_of(database, server) -> int:
    """Count the presence rows of ``server``'s process (its id holds the pid)."""
    with sqlite3.connect(database) as db:
        pattern = f"%:{server.process.pid}:%"
        return db.execute(
            "SELECT count(*) FROM echo_connection WHERE process_id LIKE ?", (pattern,)
        ).fetchone()[0]


async def wait_until(condition, what: str, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still not {what} after {timeout} s"
        await asyncio.sleep(0.1)


async def test_hostile_clients_leave_no_presence_row_gauge_or_subscription_behind(
    start_daphne, live_database, daphne_env
):
    """After clients that used to crash their consumer are gone: gauge 0, no rows, no group membership."""
    server = start_daphne(METRICS_PUBLIC="1")
    group = f"hostile{server.port}"

    def subscriptions() -> float:
        return metric(server, "echo_push_log_members")

    async with (
        connect(server, f"/ws/?group={group}") as plain,
        connect(server, f"/ws/?group={group}", json_protocol=True) as json_client,
    ):
        assert (await next_envelope(json_client))["type"] == "welcome"
        await wait_until(lambda: rows_of(live_database, server) == 2, "2 rows")
        assert metric(server, "echo_connections_open") == 2 and subscriptions() == 4  # all and the group
        for frame in HOSTILE_FRAMES.values():
            await json_client.send(frame)
            assert (await next_envelope(json_client))["type"] == "error"
        await plain.send("x" * (LIMIT - 24))
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(plain.recv(), 5)
        assert plain.close_code == 1009
    await wait_until(lambda: metric(server, "echo_connections_open") == 0, "gauge 0")
    await wait_until(lambda: rows_of(live_database, server) == 0, "0 rows")
    assert subscriptions() == 0


async def test_a_handler_failing_live_closes_with_1011_logs_once_and_cleans_up(daphne_env, tmp_path):
    """A resume the push log cannot serve falls back to a database with no tables, and fails: 1011, one
    logged traceback, nothing left behind."""
    log_key = f"failing-log-{tmp_path.name}"
    empty = {"DATABASE_URL": f"sqlite:///{tmp_path / 'empty.sqlite3'}", "METRICS_PUBLIC": "1"}
    server = DaphneServer(env={**daphne_env, **empty, "PUSH_LOG_KEY": log_key}).start()
    subscribed = redis.Redis.from_url(daphne_env["REDIS_URL"])
    subscribed.set(f"{log_key}:position", 5)  # pushes 1-5 that the stream no longer holds
    group = f"failing{server.port}"
    try:
        async with connect(server, f"/ws/?group={group}&after=0", json_protocol=True) as ws:
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "welcome"
        assert (ws.close_code, ws.close_reason) == (1011, "internal server error")
        await wait_until(lambda: metric(server, "echo_connections_open") == 0, "gauge 0")
        assert metric(server, "echo_push_log_members") == 0
        log = server.wait_for_log("closed code=1011")
    finally:
        server.stop()
        subscribed.close()
    assert len(re.findall(r"^\S+ \S+ (ERROR|CRITICAL) ", log, re.MULTILINE)) == 1, log
    assert re.search(r"ERROR echo\.consumers conn=\w{8} peer=127\.0\.0\.1:\d+ failed: closing with 1011", log)
    assert "no such table: echo_broadcast" in log and "Exception inside application" not in log
