"""Server push across two live Daphne processes sharing one Redis and one database."""

import asyncio
import http.cookiejar
import json
import re
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
import websockets

from tests.conftest import ADMIN_PASSWORD
from tests.servers import ROOT, DaphneServer


def connect(server: DaphneServer, path: str = "/ws/", json: bool = False):
    return websockets.connect(
        server.ws_url + path, open_timeout=30, subprotocols=["echo.json"] if json else None
    )


def broadcast(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "broadcast", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def next_text(ws, timeout: float = 5) -> str:
    """Return the next frame that is not a presence count or the welcome."""
    while True:
        frame = await asyncio.wait_for(ws.recv(), timeout)
        if '"type": "presence"' not in frame and '"type": "welcome"' not in frame:
            return frame


def rows_for(database, ports: list[int]) -> dict[int, str]:
    """Return {client port: process id} of the presence rows of these client ports."""
    with sqlite3.connect(database) as db:
        found = db.execute("SELECT peer, process_id FROM echo_connection").fetchall()
    by_port = {int(peer.rsplit(":", 1)[1]): process for peer, process in found}
    return {port: by_port[port] for port in ports if port in by_port}


async def wait_rows(database, ports: list[int], present: bool, timeout: float = 15) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = rows_for(database, ports)
        if (len(rows) == len(ports)) if present else not rows:
            return rows
        await asyncio.sleep(0.2)
    raise AssertionError(f"rows for {ports}: {rows_for(database, ports)}, wanted present={present}")


async def test_command_reaches_every_client_on_both_processes(daphne, daphne_b, daphne_env):
    """One manage.py broadcast reaches plain and JSON clients on both Daphne processes."""
    async with connect(daphne) as a, connect(daphne_b) as b, connect(daphne_b, json=True) as b_json:
        result = broadcast(daphne_env, "to everyone")
        assert result.returncode == 0, result.stderr
        assert re.fullmatch(
            r"Broadcast #\d+ sent to group 'all'; the registry knows \d+ live connection\(s\) there\.\n",
            result.stdout,
        )
        assert await next_text(a) == "Server broadcast: to everyone"
        assert await next_text(b) == "Server broadcast: to everyone"
        envelope = await next_text(b_json)
        assert '"type": "broadcast"' in envelope and '"text": "to everyone"' in envelope


async def test_group_broadcast_reaches_only_that_group_on_both_processes(daphne, daphne_b, daphne_env):
    """--group red reaches red clients on both processes, and no one else."""
    async with (
        connect(daphne, "/ws/?group=red") as red_a,
        connect(daphne_b, "/ws/?group=red") as red_b,
        connect(daphne_b) as plain_b,
    ):
        result = broadcast(daphne_env, "red alert", "--group", "red")
        assert result.returncode == 0, result.stderr
        assert await next_text(red_a) == "Server broadcast: red alert"
        assert await next_text(red_b) == "Server broadcast: red alert"
        with pytest.raises(TimeoutError):
            await next_text(plain_b, timeout=0.7)


async def test_presence_rows_appear_on_connect_and_vanish_on_close(daphne, daphne_b, live_database):
    """Each process records its own clients; the rows go when the clients close."""
    async with connect(daphne) as a, connect(daphne_b, json=True) as b:
        ports = [a.local_address[1], b.local_address[1]]
        rows = await wait_rows(live_database, ports, present=True)
        assert len(set(rows.values())) == 2, "two processes, two process ids"
        # Each process counts the other's rows once that one has written them: wait for both.
        deadline = time.monotonic() + 10
        while (await next_frame_of_type(b, "presence", timeout=10))["online"] < 2:
            assert time.monotonic() < deadline, "the online count never included both processes"
    await wait_rows(live_database, ports, present=False)


async def next_frame_of_type(ws, kind: str, timeout: float = 5) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic())))
        if frame["type"] == kind:
            return frame


async def test_rows_of_a_killed_process_vanish_without_restarting_anything(
    daphne, fresh_daphne, live_database
):
    """kill -9 of one Daphne: its rows are gone within PRESENCE_STALE_AFTER (5 s here) plus a beat."""
    async with connect(daphne) as keeper:  # keeps the surviving process's presence task running
        victim = await websockets.connect(fresh_daphne.ws_url + "/ws/", open_timeout=30)
        port = victim.local_address[1]
        await wait_rows(live_database, [port, keeper.local_address[1]], present=True)
        fresh_daphne.kill()
        started = time.monotonic()
        await wait_rows(live_database, [port], present=False, timeout=30)
        assert time.monotonic() - started < 15
        assert rows_for(live_database, [keeper.local_address[1]]), "the survivor's rows stay"
        await victim.close()


def admin_opener(server: DaphneServer) -> tuple[urllib.request.OpenerDirector, http.cookiejar.CookieJar]:
    """Sign in to the live admin as the superuser, the way a browser does (cookie and CSRF token)."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    login = opener.open(server.http_url + "/admin/login/?next=/admin/", timeout=5).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login).group(1)
    form = {"username": "admin", "password": ADMIN_PASSWORD, "csrfmiddlewaretoken": token, "next": "/admin/"}
    page = (
        opener.open(
            server.http_url + "/admin/login/?next=/admin/", urllib.parse.urlencode(form).encode(), timeout=5
        )
        .read()
        .decode()
    )
    assert "Log out" in page or "logout" in page, "the superuser could not sign in"
    return opener, jar


async def test_admin_form_on_the_live_server_sends_to_the_other_process(daphne, daphne_b):
    """Signing in to /admin/ on one process and saving a broadcast reaches a client on the other."""
    opener, _ = admin_opener(daphne)
    async with connect(daphne_b) as listener:
        add = opener.open(daphne.http_url + "/admin/echo/broadcast/add/", timeout=5).read().decode()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', add).group(1)
        form = urllib.parse.urlencode(
            {"text": "from the live admin", "group": "all", "csrfmiddlewaretoken": token}
        )
        page = await asyncio.to_thread(
            lambda: opener.open(
                daphne.http_url + "/admin/echo/broadcast/add/", form.encode(), timeout=10
            ).read()
        )
        assert b"sent to group &#x27;all&#x27;" in page
        assert await next_text(listener) == "Server broadcast: from the live admin"


async def test_admin_lists_connections_of_both_processes(daphne, daphne_b, live_database):
    """The live admin's connection list shows clients of both processes."""
    opener, _ = admin_opener(daphne)
    async with connect(daphne, "/ws/?group=listed") as a, connect(daphne_b, "/ws/?group=listed") as b:
        rows = await wait_rows(live_database, [a.local_address[1], b.local_address[1]], present=True)
        page = opener.open(daphne.http_url + "/admin/echo/connection/?q=listed", timeout=5).read().decode()
        for port, process in rows.items():
            assert f"127.0.0.1:{port}" in page
            assert process in page


async def test_admin_disconnect_closes_a_client_on_the_other_process(daphne, daphne_b, live_database):
    """The admin action on one process closes a client of the other with 4000 and a reason."""
    opener, _ = admin_opener(daphne)
    async with connect(daphne_b) as target:
        port = target.local_address[1]
        await wait_rows(live_database, [port], present=True)
        with sqlite3.connect(live_database) as db:
            (connection_id,) = db.execute(
                "SELECT id FROM echo_connection WHERE peer = ?", (f"127.0.0.1:{port}",)
            ).fetchone()
        page = opener.open(daphne.http_url + "/admin/echo/connection/", timeout=5).read().decode()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
        form = {
            "action": "disconnect_selected",
            "_selected_action": connection_id,
            "csrfmiddlewaretoken": token,
        }
        await asyncio.to_thread(
            lambda: opener.open(
                daphne.http_url + "/admin/echo/connection/", urllib.parse.urlencode(form).encode(), timeout=10
            ).read()
        )
        await asyncio.wait_for(target.wait_closed(), 5)
    assert target.protocol.close_rcvd is not None
    assert (target.protocol.close_rcvd.code, target.protocol.close_rcvd.reason) == (
        4000,
        "disconnected by admin",
    )
