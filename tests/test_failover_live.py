"""Redis failover under Sentinel: a real primary, a replica and three sentinels (tests/sentinel.py).

The primary is killed with -9 while pushes flow: pushes resume on the promoted replica within the
failover time, and every push whose sender was told it was sent (the log took it and a replica
confirmed it: REDIS_WAIT_REPLICAS) reaches the clients, which stay connected throughout.
"""

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
import websockets
from django.test import override_settings

from echo import pushlog
from tests.sentinel import SentinelCluster
from tests.servers import ROOT, free_port

PUSHES = 10  # after the kill
INTERVAL = 0.15  # s between pushes


def send_pushes(cluster: SentinelCluster, kill_after: int, outcomes: dict) -> None:
    """Push, killing the primary after ``kill_after`` pushes, until PUSHES went in after the kill (or
    30 s passed); note what each sender was told."""
    sentinel_settings = {
        "REDIS_SENTINELS": cluster.sentinel_addresses,
        "REDIS_MASTER_NAME": cluster.master_name,
        "REDIS_WAIT_REPLICAS": 1,
        "CHANNEL_LAYER_SEND_TIMEOUT": 0.5,  # how long WAIT waits for a replica
    }
    with override_settings(**sentinel_settings):
        deadline = time.monotonic() + 30
        for n in range(10_000):
            after_kill = [at for at, _ in outcomes["appended"] if at > outcomes.get("killed_at", at)]
            if len(after_kill) >= PUSHES or time.monotonic() > deadline:
                return
            if n == kill_after:
                cluster.kill_primary()
                outcomes["killed_at"] = time.monotonic()
            push = {
                "group": "all",
                "text": f"push {n}",
                "sender": "server",
                "sent_at": "2026-11-22T00:00:00+00:00",
            }
            try:
                position = pushlog.append(push, floor=0)
            except Exception as error:
                outcomes["failed"].append((n, type(error).__name__))
            else:
                outcomes["appended"].append((time.monotonic(), position))
                try:
                    pushlog.confirm_replicated()
                    outcomes["confirmed"].append((time.monotonic(), position))
                except Exception as error:
                    outcomes["unconfirmed"].append((position, type(error).__name__))
            time.sleep(INTERVAL)


@pytest.mark.timeout(120)
async def test_pushes_resume_after_the_primary_is_killed_and_nothing_confirmed_is_lost(
    start_daphne, daphne_env, tmp_path
):
    """kill -9 of the primary mid-stream: clients keep their connections and get every confirmed push."""
    # A database of its own: the push log's history belongs with its Redis, and the suite's shared
    # database holds positions of another Redis's log.
    database = {"DATABASE_URL": f"sqlite:///{tmp_path / 'failover.sqlite3'}"}
    command = [sys.executable, "manage.py", "migrate", "-v", "0"]
    subprocess.run(command, cwd=ROOT, env={**os.environ, **daphne_env, **database}, check=True)
    with SentinelCluster() as cluster:
        sentinels = {"REDIS_SENTINELS": cluster.sentinels_setting, "REDIS_MASTER_NAME": cluster.master_name}
        # REDIS_URL points where nothing answers: with sentinels nothing may use it.
        server = start_daphne(**database, **sentinels, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
        with urllib.request.urlopen(server.http_url + "/healthz", timeout=10) as response:
            assert json.loads(response.read())["checks"]["redis"] == "ok"
        clients = []
        for _ in range(3):
            ws = await websockets.connect(server.ws_url + "/ws/", subprotocols=["echo.json"], open_timeout=10)
            assert json.loads(await ws.recv())["type"] == "welcome"
            clients.append(ws)
        outcomes = {"failed": [], "confirmed": [], "unconfirmed": [], "appended": []}
        sender = threading.Thread(target=send_pushes, args=(cluster, 6, outcomes))
        sender.start()
        received: list[set[int]] = [set() for _ in clients]

        async def listen(ws, into: set[int]) -> None:
            while True:
                message = json.loads(await ws.recv())
                if message["type"] == "broadcast":
                    into.add(message["id"])

        listeners = [
            asyncio.create_task(listen(ws, into)) for ws, into in zip(clients, received, strict=True)
        ]
        await asyncio.to_thread(sender.join, 90)
        confirmed = {position for _, position in outcomes["confirmed"]}
        after_kill = {position for at, position in outcomes["appended"] if at > outcomes["killed_at"]}
        deadline = time.monotonic() + 20
        while any(not confirmed | after_kill <= got for got in received) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        for task in listeners:
            task.cancel()
        # What the promoted replica holds: a client resuming from the start is served from it.
        late = await websockets.connect(
            server.ws_url + "/ws/?after=0", subprotocols=["echo.json"], open_timeout=10
        )
        replayed: set[int] = set()
        while (message := json.loads(await asyncio.wait_for(late.recv(), 10)))["type"] != "resumed":
            if message["type"] == "broadcast":
                replayed.add(message["id"])
        await late.close()
        for ws in clients:
            await ws.send(json.dumps({"type": "echo", "text": "still connected"}))
            await ws.close()
    # The promoted replica has no replica of its own (the old primary is dead): from then on the
    # log takes pushes but no replica can confirm them, and their senders are told so.
    first_after_kill = min(at for at, _ in outcomes["appended"] if at > outcomes["killed_at"])
    assert first_after_kill - outcomes["killed_at"] < 20, f"pushes did not resume in time: {outcomes}"
    assert len(confirmed) >= 5 and len(after_kill) == PUSHES, outcomes
    for got in received:
        assert confirmed <= got, f"confirmed pushes lost: {sorted(confirmed - got)}; outcomes {outcomes}"
        assert after_kill <= got, f"pushes after the failover lost: {sorted(after_kill - got)}"
    assert confirmed | after_kill <= replayed, f"the promoted replica lacks {sorted(confirmed - replayed)}"
