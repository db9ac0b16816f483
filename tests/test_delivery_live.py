"""Delivery properties of the push log (echo/pushlog.py), against live Daphnes, real senders and faults.

One order whatever the number of senders; an exact resume; catch-up after a partition without
reconnecting. Each is checked on what clients receive.
"""

import asyncio
import json
import os
import subprocess
import sys

import websockets

from tests.faults import LinkProxy
from tests.servers import ROOT, DaphneServer

SENDERS = 8


async def json_client(server: DaphneServer, query: str = "") -> tuple[websockets.ClientConnection, dict]:
    ws = await websockets.connect(f"{server.ws_url}/ws/{query}", subprotocols=["echo.json"], open_timeout=10)
    welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert welcome["type"] == "welcome"
    return ws, welcome


async def pushes(ws, count: int, timeout: float = 20) -> list[int]:
    """Return the ids of the next ``count`` broadcasts ``ws`` receives (presence frames skipped)."""
    ids: list[int] = []
    async with asyncio.timeout(timeout):
        while len(ids) < count:
            message = json.loads(await ws.recv())
            if message["type"] == "broadcast":
                ids.append(message["id"])
    return ids


def broadcast_processes(env: dict[str, str], texts: list[str]) -> list[subprocess.Popen]:
    """Start one ``manage.py broadcast`` process per text, all at once."""
    command = [sys.executable, "manage.py", "broadcast"]
    full_env = {**os.environ, **env}
    return [
        subprocess.Popen(
            [*command, text], cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for text in texts
    ]


async def wait_all(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        _, stderr = await asyncio.to_thread(process.communicate, timeout=60)
        assert process.returncode == 0, stderr.decode()


async def test_concurrent_senders_reach_every_client_in_one_order(daphne, daphne_b, daphne_env):
    """8 senders at once, twice: clients on both processes get the same ids, increasing, none twice.

    Stock (the id taken at the database insert, the push on Redis pub/sub) clients got 1,2,3,5,7,6,4,8.
    """
    clients = [(await json_client(server))[0] for server in (daphne, daphne, daphne_b, daphne_b)]
    try:
        received: list[list[int]] = [[] for _ in clients]
        for round_number in range(2):
            senders = broadcast_processes(daphne_env, [f"r{round_number}-{n}" for n in range(SENDERS)])
            got = await asyncio.gather(*(pushes(ws, SENDERS, timeout=60) for ws in clients))
            await wait_all(senders)
            for mine, ids in zip(received, got, strict=True):
                mine.extend(ids)
        first = received[0]
        assert first == sorted(first) and len(set(first)) == len(first) == 2 * SENDERS, first
        assert all(ids == first for ids in received), received
    finally:
        for ws in clients:
            await ws.close()


async def test_a_resume_gets_exactly_what_was_missed_whatever_the_senders_did(daphne, daphne_b, daphne_env):
    """A client away while 8 senders pushed resumes with its position: exactly the missed ids, in order."""
    watcher, _ = await json_client(daphne_b)
    leaver, welcome = await json_client(daphne)
    await leaver.close()
    senders = broadcast_processes(daphne_env, [f"missed-{n}" for n in range(SENDERS)])
    seen = await pushes(watcher, SENDERS, timeout=60)
    await wait_all(senders)
    back, _ = await json_client(daphne, f"?after={welcome['last_broadcast']}")
    replayed: list[int] = []
    while (message := json.loads(await asyncio.wait_for(back.recv(), 10)))["type"] != "resumed":
        if message["type"] == "broadcast":
            replayed.append(message["id"])
    assert replayed == seen == sorted(seen), (replayed, seen)
    assert message == {
        "type": "resumed",
        "after": welcome["last_broadcast"],
        "replayed": SENDERS,
        "truncated": False,
    }
    await back.close()
    await watcher.close()


async def test_a_process_cut_off_from_redis_catches_up_without_reconnecting(
    start_daphne, daphne, redis_server
):
    """One process loses Redis for 3 s while 6 broadcasts go out; its clients, still connected, get
    all of them in order once the link is back. Stock, they silently missed half."""
    with LinkProxy(redis_server.port) as link:
        cut_off = start_daphne(REDIS_URL=link.url_for(0))
        near = [(await json_client(daphne))[0] for _ in range(3)]
        far = [(await json_client(cut_off))[0] for _ in range(3)]
        link.cut()
        senders = []
        for n in range(6):
            senders += broadcast_processes(daphne.env, [f"during-cut-{n}"])
            await asyncio.sleep(0.5)
        await wait_all(senders)
        near_ids = await asyncio.gather(*(pushes(ws, 6) for ws in near))
        link.restore()
        far_ids = await asyncio.gather(*(pushes(ws, 6, timeout=30) for ws in far))
        assert all(ids == near_ids[0] == sorted(ids) for ids in [*near_ids, *far_ids]), (near_ids, far_ids)
        for ws in far:  # still the same connections: nothing was closed
            await ws.send(json.dumps({"type": "echo", "text": "still here"}))
        cut_off.wait_for_log("reachable again for the push log", timeout=10)
        for ws in [*near, *far]:
            await ws.close()
    assert "Traceback" not in cut_off.log()
