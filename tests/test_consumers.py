"""The consumers on their own, through Channels' WebsocketCommunicator, over a real Redis."""

import logging

import pytest
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from echo import consumers
from echo.consumers import EchoConsumer, RawEchoConsumer
from echo.presence import PresenceRegistry
from echo.services import BROADCAST_MESSAGE, layer_group

pytestmark = [pytest.mark.usefixtures("channel_layer_settings"), pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
async def registry(monkeypatch):
    """A presence registry of the test's own, stopped with the test's event loop."""
    fresh = PresenceRegistry()
    monkeypatch.setattr(consumers, "registry", fresh)
    yield fresh
    await fresh.stop()


async def connected(consumer, path: str) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(consumer.as_asgi(), path)
    accepted, _ = await communicator.connect()
    assert accepted
    return communicator


async def test_text_is_answered_with_the_greeting():
    """Text X comes back as 'Server: Hello. You said: X', unicode intact."""
    communicator = await connected(EchoConsumer, "/ws/")
    await communicator.send_to(text_data="héllo, wörld ✓ 🙂")
    assert await communicator.receive_from() == "Server: Hello. You said: héllo, wörld ✓ 🙂"
    await communicator.disconnect()


async def test_binary_is_echoed_as_binary():
    """A binary message comes back as the same bytes."""
    communicator = await connected(EchoConsumer, "/ws/")
    payload = bytes(range(256))
    await communicator.send_to(bytes_data=payload)
    assert await communicator.receive_output() == {"type": "websocket.send", "bytes": payload}
    await communicator.disconnect()


@pytest.mark.parametrize("payload", [{"text": ""}, {"text": "x ✓"}, {"bytes": b""}, {"bytes": b"\x00\xff"}])
async def test_raw_echo_returns_exactly_what_came(payload):
    """ws/raw/ answers text with the same text and bytes with the same bytes, empty included."""
    communicator = await connected(RawEchoConsumer, "/ws/raw/")
    # send_to() refuses an empty payload, so the ASGI message goes in as it is.
    await communicator.send_input({"type": "websocket.receive", **payload})
    assert await communicator.receive_output() == {"type": "websocket.send", **payload}
    await communicator.disconnect()


async def test_echo_connection_receives_group_broadcasts():
    """A ws/ connection joins the broadcast group and relays what is sent to it."""
    communicator = await connected(EchoConsumer, "/ws/")
    await get_channel_layer().group_send(layer_group("all"), {"type": BROADCAST_MESSAGE, "text": "hi all"})
    assert await communicator.receive_from(timeout=3) == "Server broadcast: hi all"
    await communicator.disconnect()


async def test_connection_life_is_logged_with_id_and_peer(caplog):
    """Connect and close each log one INFO line naming the connection id and the peer."""
    caplog.set_level(logging.INFO, logger="echo")
    communicator = WebsocketCommunicator(EchoConsumer.as_asgi(), "/ws/")
    communicator.scope["client"] = ("10.1.2.3", 5555)
    await communicator.connect()
    await communicator.disconnect(code=4000)
    lines = [r.getMessage() for r in caplog.records if r.name == "echo.consumers"]
    assert len(lines) == 2
    opened, closed = lines
    conn_id = opened.split()[0]
    assert conn_id.startswith("conn=") and len(conn_id) == len("conn=") + 8
    assert "peer=10.1.2.3:5555" in opened and "connected path=/ws/" in opened
    assert closed.startswith(conn_id) and "peer=10.1.2.3:5555" in closed and "code=4000" in closed


async def test_message_lines_are_logged_only_when_enabled(caplog):
    """Per-message lines go to echo.messages at INFO: silent at WARNING, present at INFO."""
    caplog.set_level(logging.WARNING, logger="echo.messages")
    communicator = await connected(RawEchoConsumer, "/ws/raw/")
    await communicator.send_to(text_data="quiet")
    await communicator.receive_from()
    assert not [r for r in caplog.records if r.name == "echo.messages"]

    caplog.set_level(logging.INFO, logger="echo.messages")
    await communicator.send_to(text_data="loud")
    await communicator.receive_from()
    lines = [r.getMessage() for r in caplog.records if r.name == "echo.messages"]
    assert len(lines) == 2
    assert "received text 4 chars" in lines[0] and "sent text 4 chars" in lines[1]
    assert "loud" not in " ".join(lines), "message content must not be logged"
    await communicator.disconnect()
