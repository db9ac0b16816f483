"""SIGTERM to a live Daphne: close frames, disconnect handlers, presence rows removed, a prompt exit."""

import asyncio
import socket
import sqlite3
import time

import websockets


def presence_rows(database) -> list[str]:
    with sqlite3.connect(database) as db:
        return [peer for (peer,) in db.execute("SELECT peer FROM echo_connection")]


async def test_sigterm_closes_every_client_with_1001_and_cleans_up(fresh_daphne, live_database):
    """Every client gets close 1001 and a reason, each disconnect() runs, the rows go with the process."""
    url = fresh_daphne.ws_url + "/ws/"
    clients = [await websockets.connect(url) for _ in range(3)]
    clients.append(await websockets.connect(url, subprotocols=["echo.json"]))
    peers = [f"127.0.0.1:{ws.local_address[1]}" for ws in clients]
    deadline = time.monotonic() + 10
    while not set(peers) <= set(presence_rows(live_database)):
        assert time.monotonic() < deadline, "presence rows did not appear"
        await asyncio.sleep(0.1)
    # A client that never reads must not hold the shutdown up.
    stuck = socket.create_connection(("127.0.0.1", fresh_daphne.port))
    stuck.sendall(
        b"GET /ws/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: L4kHN+1Bx7zKbxsDbqgzHw==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )

    started = time.monotonic()
    await asyncio.to_thread(fresh_daphne.stop)
    assert time.monotonic() - started < 10
    assert fresh_daphne.process.returncode == 0

    for ws in clients:
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.protocol.close_rcvd is not None, "the server sent no close frame"
        assert (ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason) == (1001, "server shutting down")
    log = fresh_daphne.log()
    for peer in peers:
        assert f"peer={peer} closed code=1001" in log
    assert not set(peers) & set(presence_rows(live_database)), "the process's rows were removed at exit"
    assert "Traceback" not in log
    stuck.close()
