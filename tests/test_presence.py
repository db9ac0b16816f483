"""The presence registry: rows for live connections, counts for JSON clients, dead processes reaped."""

import asyncio
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.utils import timezone

from echo.consumers import EchoConsumer
from echo.models import Connection, ServerProcess
from echo.presence import PresenceRegistry

pytestmark = [
    pytest.mark.usefixtures("channel_layer_settings", "registry"),
    pytest.mark.django_db(transaction=True),
]


async def connect(path="/ws/", json=False, user_agent="pytest-agent/1.0") -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(
        EchoConsumer.as_asgi(),
        path,
        headers=[(b"user-agent", user_agent.encode())],
        subprotocols=["echo.json"] if json else None,
    )
    communicator.scope["client"] = ("127.0.0.9", 4242)
    accepted, _ = await communicator.connect()
    assert accepted
    if json:
        assert (await communicator.receive_json_from())["type"] == "welcome"
    return communicator


async def wait_registered(registry: PresenceRegistry, count: int) -> None:
    for _ in range(200):
        if len(registry.listeners) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(registry.listeners)} registered, expected {count}")


@database_sync_to_async
def rows() -> list[Connection]:
    return list(Connection.objects.select_related("process").order_by("protocol"))


async def test_connections_are_recorded_with_what_the_admin_shows(registry):
    """After a flush, each connection has a row: id, groups, peer, user agent, protocol, since, process."""
    plain = await connect("/ws/?group=red")
    json = await connect(json=True, user_agent="Browser/2")
    await wait_registered(registry, 2)
    await registry.flush()
    plain_row, json_row = await rows()
    assert plain_row.groups == "all,red" and plain_row.protocol == "" and plain_row.path == "/ws/"
    assert plain_row.peer == "127.0.0.9:4242" and plain_row.user_agent == "pytest-agent/1.0"
    assert (
        json_row.groups == "all" and json_row.protocol == "echo.json" and json_row.user_agent == "Browser/2"
    )
    assert plain_row.process_id == json_row.process_id == registry.process_id
    assert plain_row.user_id is None
    assert timezone.now() - plain_row.connected_at < timedelta(seconds=10)
    await plain.disconnect()
    await json.disconnect()


async def test_rows_go_when_connections_end(registry):
    """A closed connection's row is gone after the next flush; the last one retires the process row."""
    first, second = await connect(), await connect()
    await wait_registered(registry, 2)
    await registry.flush()
    assert len(await rows()) == 2
    await first.disconnect()
    await registry.flush()
    assert len(await rows()) == 1
    await second.disconnect()
    await registry.flush()
    assert await rows() == []
    assert not await ServerProcess.objects.filter(id=registry.process_id).aexists()


async def test_json_clients_get_the_online_count_once_per_flush(registry):
    """50 connects in one interval give each JSON client one presence frame, not 50."""
    json = await connect(json=True)
    plain = [await connect() for _ in range(49)]
    await wait_registered(registry, 50)
    await registry.flush()
    assert await json.receive_json_from() == {"type": "presence", "online": 50}
    assert await json.receive_nothing(timeout=0.2)
    await registry.flush()
    assert await json.receive_nothing(timeout=0.2), "no frame when the count did not change"
    for communicator in plain:
        assert await communicator.receive_nothing(timeout=0), "plain clients get no presence frames"
        await communicator.disconnect()
    await registry.flush()
    assert await json.receive_json_from() == {"type": "presence", "online": 1}
    await json.disconnect()


async def test_group_changes_reach_the_row(registry):
    """A join after connecting shows in the connection's row."""
    json = await connect(json=True)
    await wait_registered(registry, 1)
    await registry.flush()
    await json.receive_json_from()
    await json.send_json_to({"type": "join", "group": "blue"})
    await json.receive_json_from()
    await registry.flush()
    assert [row.groups for row in await rows()] == ["all,blue"]
    await json.disconnect()


async def test_rows_of_a_silent_process_are_removed(registry, settings):
    """A process whose heartbeat is older than PRESENCE_STALE_AFTER loses its rows at the next flush."""
    settings.PRESENCE_STALE_AFTER = 30

    @database_sync_to_async
    def make_dead_process() -> None:
        dead = ServerProcess.objects.create(id="dead:1", last_seen=timezone.now() - timedelta(seconds=31))
        Connection.objects.create(
            id="deadbeef", process=dead, channel_name="x", path="/ws/", peer="p", connected_at=timezone.now()
        )

    await make_dead_process()
    live = await connect(json=True)
    await wait_registered(registry, 1)
    await registry.flush()
    assert await live.receive_json_from() == {"type": "presence", "online": 1}
    assert "deadbeef" not in [row.id for row in await rows()]
    assert not await ServerProcess.objects.filter(id="dead:1").aexists()
    await live.disconnect()


async def test_database_outage_is_logged_once_and_retried(registry, monkeypatch, caplog):
    """When the write fails, the changes are kept, one warning is logged, and the next flush writes them."""
    live = await connect()
    await wait_registered(registry, 1)
    real_write = registry.write

    def failing_write(*args):
        raise RuntimeError("database is locked")

    monkeypatch.setattr(registry, "write", failing_write)
    await registry.flush()
    await registry.flush()
    assert [r.getMessage() for r in caplog.records if r.name == "echo.presence"] == [
        "presence not written, will retry: database is locked"
    ]
    monkeypatch.setattr(registry, "write", real_write)
    await registry.flush()
    assert len(await rows()) == 1
    await live.disconnect()
