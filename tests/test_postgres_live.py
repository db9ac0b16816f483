"""The push, resume and presence paths on PostgreSQL: two live Daphnes on a throwaway database.

Skipped, saying why, when no PostgreSQL answers on 127.0.0.1:5432. The database is created for
the module and dropped after it.
"""

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
import websockets

from tests.servers import ROOT, DaphneServer

ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="module")
def postgres_env(daphne_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """The live settings on a new PostgreSQL database, migrated; dropped at the end."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        pytest.skip(f"no PostgreSQL at {ADMIN_URL.rsplit('@', 1)[-1]}: {str(error).strip()[:120]}")
    name = f"echo_test_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        env = {**daphne_env, "DATABASE_URL": ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"}
        command = [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"]
        subprocess.run(command, cwd=ROOT, env={**os.environ, **env}, check=True)
        yield env
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="module")
def pg_daphnes(postgres_env: dict[str, str]) -> Iterator[tuple[DaphneServer, DaphneServer]]:
    servers = (DaphneServer(env=postgres_env).start(), DaphneServer(env=postgres_env).start())
    yield servers
    for server in servers:
        server.stop()
        server.assert_no_tracebacks()


async def json_client(server: DaphneServer, query: str = ""):
    ws = await websockets.connect(f"{server.ws_url}/ws/{query}", subprotocols=["echo.json"], open_timeout=10)
    welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert welcome["type"] == "welcome"
    return ws, welcome


async def next_of(ws, kind: str) -> dict:
    while (message := json.loads(await asyncio.wait_for(ws.recv(), 10)))["type"] != kind:
        pass
    return message


def broadcast(env: dict[str, str], text: str) -> None:
    command = [sys.executable, "manage.py", "broadcast", text]
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


async def test_pushes_reach_both_processes_and_resume_exactly_on_postgres(pg_daphnes, postgres_env):
    """On PostgreSQL: a broadcast reaches clients of both processes, and a resume gets what was missed."""
    first, second = pg_daphnes
    a, _ = await json_client(first)
    b, _ = await json_client(second)
    leaver, welcome = await json_client(first)
    await leaver.close()
    for n in range(3):
        await asyncio.to_thread(broadcast, postgres_env, f"pg {n}")
    got_a = [(await next_of(a, "broadcast"))["text"] for _ in range(3)]
    got_b = [(await next_of(b, "broadcast"))["text"] for _ in range(3)]
    assert got_a == got_b == ["pg 0", "pg 1", "pg 2"]
    back, _ = await json_client(first, f"?after={welcome['last_broadcast']}")
    replayed = [(await next_of(back, "broadcast"))["text"] for _ in range(3)]
    resumed = await next_of(back, "resumed")
    assert replayed == ["pg 0", "pg 1", "pg 2"] and resumed["truncated"] is False
    for ws in (a, b, back):
        await ws.close()


async def test_presence_rows_come_and_go_on_postgres(pg_daphnes, postgres_env):
    """Connections show in the presence table within the interval and leave it when they close."""
    psycopg = pytest.importorskip("psycopg")
    first, _ = pg_daphnes

    def rows() -> int:
        with psycopg.connect(postgres_env["DATABASE_URL"]) as db:
            return db.execute("SELECT count(*) FROM echo_connection").fetchone()[0]

    clients = [(await json_client(first))[0] for _ in range(5)]
    for _ in range(50):
        if await asyncio.to_thread(rows) == 5:
            break
        await asyncio.sleep(0.2)
    assert await asyncio.to_thread(rows) == 5
    for ws in clients:
        await ws.close()
    for _ in range(50):
        if await asyncio.to_thread(rows) == 0:
            break
        await asyncio.sleep(0.2)
    assert await asyncio.to_thread(rows) == 0
