"""The consumers on their own, through Channels' WebsocketCommunicator, over a real Redis."""

import asyncio
import contextlib
import json
import logging
from urllib.parse import parse_qs, urlsplit

import channels.consumer
import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from prometheus_client import REGISTRY

from echo import pushlog, services
from echo.consumers import EchoConsumer, RawEchoConsumer
from echo.models import Broadcast
from echo.presence import PresenceRegistry
from tests.servers import free_port

pytestmark = [
    pytest.mark.usefixtures("channel_layer_settings", "registry"),
    pytest.mark.django_db(transaction=True),
]


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


async def log_top() -> int:
    """The position of the newest push in the log (the test Redis is shared by the session)."""
    return int(await sync_to_async(pushlog.sync_client().get)(pushlog.counter_key()) or 0)


async def push(text: str, group: str = "all"):
    """Send a broadcast the way the command and the admin do."""
    return await database_sync_to_async(services.broadcast_send)(text=text, group=group)


async def test_echo_connection_receives_group_broadcasts():
    """A ws/ connection joins the broadcast group and relays what is sent to it."""
    communicator = await connected(EchoConsumer, "/ws/")
    await push("hi all")
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


async def connected_json(path: str = "/ws/") -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(EchoConsumer.as_asgi(), path, subprotocols=["echo.json"])
    accepted, subprotocol = await communicator.connect()
    assert accepted and subprotocol == "echo.json"
    welcome = await communicator.receive_json_from()
    groups = ["all", *parse_qs(urlsplit(path).query).get("group", [])]
    assert welcome["type"] == "welcome" and welcome["user"] is None and welcome["groups"] == groups
    return communicator


async def test_json_client_gets_envelopes():
    """With echo.json, an echo comes back as a JSON envelope of type echo."""
    communicator = await connected_json()
    await communicator.send_json_to({"type": "echo", "text": "héllo"})
    assert await communicator.receive_json_from() == {
        "type": "echo",
        "text": "Server: Hello. You said: héllo",
    }
    await communicator.disconnect()


@pytest.mark.parametrize(
    "frame, error",
    [
        ("not json", "expected a JSON object, got text that is not JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"type": "shout", "text": "x"}', "expected type to be one of echo, join, leave, say, got 'shout'"),
        ('{"type": "echo"}', "expected a string 'text' in a 'echo' message"),
        ('{"type": "join", "group": "no spaces"}', "invalid group name 'no spaces'"),
        ('{"type": "leave", "group": "all"}', "every connection stays in 'all'"),
        ('{"type": "leave", "group": "user:1"}', "invalid group name 'user:1'"),
        ('{"type": "join", "group": "user:1"}', "invalid group name 'user:1'"),
        ('{"type": "say", "text": "hi"}', "expected a string 'group' in a 'say' message, got None"),
        ('{"type": "say", "group": "red"}', "expected a string 'text' in a 'say' message, got None"),
        ('{"type": "say", "group": "red", "text": "\\udc00"}', "expected 'text' to be Unicode text"),
        ('{"type": "say", "group": "red", "text": "hi"}', "only signed-in users may speak in a room"),
    ],
)
async def test_bad_json_message_gets_an_error_envelope_and_the_connection_stays(frame, error):
    """A malformed echo.json message is answered with an error naming the problem; echo still works."""
    communicator = await connected_json()
    await communicator.send_to(text_data=frame)
    reply = await communicator.receive_json_from()
    assert reply["type"] == "error" and error in reply["error"]
    await communicator.send_json_to({"type": "echo", "text": "still"})
    assert (await communicator.receive_json_from())["type"] == "echo"
    await communicator.disconnect()


async def test_json_client_joins_and_leaves_groups():
    """join and leave change which group broadcasts the client gets."""
    communicator = await connected_json()
    await communicator.send_json_to({"type": "join", "group": "red"})
    assert await communicator.receive_json_from() == {
        "type": "joined",
        "group": "red",
        "groups": ["all", "red"],
    }
    sent = await push("to red", "red")
    event = {"id": sent.position, "text": "to red", "group": "red", "sender": "server"}
    received = await communicator.receive_json_from(timeout=3)
    assert {key: received[key] for key in event} == event and received["type"] == "broadcast"
    await communicator.send_json_to({"type": "leave", "group": "red"})
    assert await communicator.receive_json_from() == {"type": "left", "group": "red", "groups": ["all"]}
    await push("to red again", "red")
    assert await communicator.receive_nothing(timeout=0.5)
    await communicator.disconnect()


async def test_plain_client_joins_groups_from_the_query_string():
    """?group=red puts a plain client in red (and all), not in blue."""
    communicator = await connected(EchoConsumer, "/ws/?group=red")
    await push("to blue", "blue")
    await push("to red", "red")
    assert await communicator.receive_from(timeout=3) == "Server broadcast: to red"
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.disconnect()


async def test_bad_group_in_the_query_string_closes_with_1008_and_a_reason():
    """An invalid group name on connect gets close code 1008 with a reason, not a crash."""
    communicator = WebsocketCommunicator(EchoConsumer.as_asgi(), "/ws/?group=bad%20name!")
    accepted, _ = await communicator.connect()
    assert accepted
    closed = await communicator.receive_output()
    assert closed["type"] == "websocket.close" and closed["code"] == 1008
    assert "invalid group name 'bad name!'" in closed["reason"]


async def registered_rows(registry: PresenceRegistry, count: int) -> list[dict]:
    """Wait until the consumers have counted themselves in (they do it just after accepting)."""
    for _ in range(100):
        if len(registry.added) >= count:
            return list(registry.added.values())
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(registry.added)} connections registered, expected {count}")


async def test_server_close_event_closes_with_its_code_and_reason(registry):
    """An administrator's disconnect reaches the connection as a close frame with 4000 and a reason."""
    communicator = await connected(EchoConsumer, "/ws/")
    layer = get_channel_layer()
    channel = (await registered_rows(registry, 1))[0]["channel_name"]
    await layer.send(channel, {"type": "connection.close", "code": 4000, "reason": "disconnected by alice"})
    closed = await communicator.receive_output(timeout=3)
    assert closed == {"type": "websocket.close", "code": 4000, "reason": "disconnected by alice"}


async def test_json_client_is_welcomed_with_its_user():
    """The first envelope names the connection, the signed-in user and the groups."""
    await push("before alice")  # so that the log's position is not 0 (a constant 0 would pass)
    alice = await User.objects.acreate(username="alice")
    communicator = WebsocketCommunicator(EchoConsumer.as_asgi(), "/ws/?group=red", subprotocols=["echo.json"])
    communicator.scope["user"] = alice
    assert (await communicator.connect())[0]
    welcome = await communicator.receive_json_from()
    assert (
        welcome["user"] == "alice"
        and welcome["groups"] == ["all", "red"]
        and welcome["last_broadcast"] == await log_top()
    )
    assert len(welcome["connection"]) == 8
    await communicator.disconnect()


async def test_messages_are_handled_without_a_thread_hop(monkeypatch):
    """No close_old_connections() thread hop per message (Channels 4.3 does one before every handler)."""
    hops = []
    real = channels.consumer.aclose_old_connections

    async def counting():
        hops.append(1)
        await real()

    monkeypatch.setattr(channels.consumer, "aclose_old_connections", counting)
    communicator = await connected(RawEchoConsumer, "/ws/raw/")
    for n in range(50):
        await communicator.send_to(text_data=f"m{n}")
        assert await communicator.receive_from() == f"m{n}"
    assert hops == []
    await communicator.disconnect()


async def test_a_closed_connection_leaves_its_groups():
    """After disconnect the process's push-log tail holds no member for the connection."""
    communicator = await connected(EchoConsumer, "/ws/?group=red")
    assert pushlog.tail.members["red"]
    await communicator.disconnect()
    assert pushlog.tail.members == {}, pushlog.tail.members


def open_connections() -> float:
    """The echo_connections_open gauge of this process."""
    return REGISTRY.get_sample_value("echo_connections_open")


def assert_cleaned_up(registry: PresenceRegistry, open_before: float) -> None:
    """No presence row, no gauge count and no group membership is left behind."""
    assert not registry.listeners and not registry.added and not registry.updated
    assert open_connections() == open_before
    assert pushlog.tail.members == {}


def fail(*args, **kwargs):
    raise RuntimeError("a bug in a handler")


async def test_a_failing_handler_closes_with_1011_logs_once_and_cleans_up(monkeypatch, caplog, registry):
    """Whatever a handler raises: one ERROR event with id and peer, close 1011, and the usual clean-up."""
    caplog.set_level(logging.INFO, logger="echo")
    open_before = open_connections()
    communicator = WebsocketCommunicator(EchoConsumer.as_asgi(), "/ws/?group=red")
    communicator.scope["client"] = ("10.1.2.3", 5555)
    assert (await communicator.connect())[0]
    await registered_rows(registry, 1)
    assert open_connections() == open_before + 1
    monkeypatch.setattr(services, "echo_reply", fail)
    await communicator.send_to(text_data="hi")
    assert await communicator.receive_output() == {
        "type": "websocket.close",
        "code": 1011,
        "reason": "internal server error",
    }
    await communicator.wait()  # the consumer stopped by itself, and raised nothing to Daphne
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info[0] is RuntimeError
    assert errors[0].getMessage().startswith("conn=") and "peer=10.1.2.3:5555" in errors[0].getMessage()
    closed = [r.getMessage() for r in caplog.records if "closed code=" in r.getMessage()]
    assert len(closed) == 1 and "code=1011" in closed[0]
    assert_cleaned_up(registry, open_before)


@pytest.mark.parametrize("where", ["before-accept", "after-accept"])
async def test_a_failure_inside_connect_undoes_what_connect_did(monkeypatch, caplog, registry, where):
    """connect() failing after joining groups (before or after accepting) leaves nothing behind."""
    open_before = open_connections()
    if where == "before-accept":
        monkeypatch.setattr(services, "presence_row", fail)
    else:
        monkeypatch.setattr(pushlog, "read_after", fail)
    path = "/ws/?group=red&group=blue" + ("&after=0" if where == "after-accept" else "")
    communicator = WebsocketCommunicator(EchoConsumer.as_asgi(), path, subprotocols=["echo.json"])
    assert (await communicator.connect())[0]
    closed = await communicator.receive_output()
    if closed["type"] == "websocket.send":  # the welcome, sent before the replay failed
        closed = await communicator.receive_output()
    assert (closed["type"], closed["code"]) == ("websocket.close", 1011)
    await communicator.wait()
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
    assert_cleaned_up(registry, open_before)


DEEP = '{"a":' * 1000 + "1" + "}" * 1000
HOSTILE_FRAMES = {
    "nested-1000-deep": DEEP,
    "list-nested-1000-deep": "[" * 1000 + "]" * 1000,
    "type-nested-900-deep": '{"type":' + "[" * 900 + "]" * 900 + "}",
    "lone-surrogate-text": '{"type": "echo", "text": "\\ud800"}',
    "lone-low-surrogate-text": '{"type": "echo", "text": "ok \\udcff ok"}',
    "lone-surrogate-group": '{"type": "join", "group": "\\ud800"}',
    "huge-exponent": '{"type": "echo", "text": "x", "n": 1e999999}',
    "5000-digit-int": '{"type": "echo", "text": "x", "n": ' + "9" * 5000 + "}",
    "nan": '{"type": "echo", "text": "x", "n": NaN}',
    "infinity-type": '{"type": -Infinity}',
    "huge-type": '{"type": "' + "x" * 100_000 + '"}',
    "huge-group": '{"type": "join", "group": "' + "é" * 100_000 + '"}',
    "huge-int-type": '{"type": ' + "9" * 4000 + "}",
    "text-is-a-list": '{"type": "echo", "text": ["a"]}',
    "text-is-null": '{"type": "echo", "text": null}',
    "top-level-string": '"echo"',
    "top-level-number": "1e999999",
    "empty": "",
}


@pytest.mark.parametrize("frame", HOSTILE_FRAMES.values(), ids=HOSTILE_FRAMES.keys())
async def test_hostile_json_gets_a_short_error_envelope_and_the_connection_stays(frame):
    """Any text at all on echo.json gets a short, valid-UTF-8 error envelope; echo still works after."""
    communicator = await connected_json()
    await communicator.send_input({"type": "websocket.receive", "text": frame})
    raw = await communicator.receive_from()
    assert len(raw.encode("utf-8")) < 300, raw[:300]
    assert json.loads(raw)["type"] == "error", raw[:300]
    await communicator.send_json_to({"type": "echo", "text": "still"})
    assert (await communicator.receive_json_from())["type"] == "echo"
    await communicator.disconnect()


@pytest.mark.parametrize("text", ["x" * 976, "é" * 488], ids=["ascii", "two-byte"])
async def test_a_reply_over_the_size_limit_closes_with_1009_naming_the_sizes(settings, text):
    """A ws/ text whose reply would pass WEBSOCKET_MAX_MESSAGE_SIZE gets close 1009, not the reply."""
    settings.WEBSOCKET_MAX_MESSAGE_SIZE = 1000
    communicator = await connected(EchoConsumer, "/ws/")
    await communicator.send_to(text_data=text)
    assert await communicator.receive_output() == {
        "type": "websocket.close",
        "code": 1009,
        "reason": "a message of 1001 bytes to send is over the limit of 1000 bytes",
    }


@pytest.mark.parametrize("payload", [{"text": "x" * 1000}, {"text": "é" * 500}, {"bytes": b"\xff" * 1000}])
async def test_raw_echo_up_to_the_size_limit_is_sent(settings, payload):
    """A message of exactly WEBSOCKET_MAX_MESSAGE_SIZE bytes (UTF-8 counted) comes back."""
    settings.WEBSOCKET_MAX_MESSAGE_SIZE = 1000
    communicator = await connected(RawEchoConsumer, "/ws/raw/")
    await communicator.send_input({"type": "websocket.receive", **payload})
    assert await communicator.receive_output() == {"type": "websocket.send", **payload}
    await communicator.disconnect()


async def test_a_json_echo_over_the_size_limit_gets_an_error_envelope(settings):
    """An echo.json echo whose reply would be too large is answered with an error; the connection stays."""
    settings.WEBSOCKET_MAX_MESSAGE_SIZE = 1000
    communicator = await connected_json()
    await communicator.send_json_to({"type": "echo", "text": "x" * 960})
    error = await communicator.receive_json_from()
    assert error == {
        "type": "error",
        "error": "the echo reply would be 1013 bytes, over the limit of 1000 bytes",
    }
    await communicator.send_json_to({"type": "echo", "text": "x" * 900})
    assert (await communicator.receive_json_from())["type"] == "echo"
    await communicator.disconnect()


async def test_a_broadcast_too_large_for_a_client_is_skipped_with_a_warning(settings, caplog):
    """A broadcast frame over the limit is not sent (a WARNING says so); the connection stays open."""
    settings.WEBSOCKET_MAX_MESSAGE_SIZE = 1000
    plain, json_client = await connected(EchoConsumer, "/ws/"), await connected_json()
    push = {"text": "x" * 990, "group": "all", "sender": "server", "sent_at": "2026-01-01T00:00:00+00:00"}
    # Straight into the log, as one recorded before broadcast_send checked sizes would be.
    large = await sync_to_async(pushlog.append)(push, floor=0)
    small = await sync_to_async(pushlog.append)({**push, "text": "small"}, floor=0)
    assert await plain.receive_from(timeout=3) == "Server broadcast: small"
    assert (await json_client.receive_json_from(timeout=3))["id"] == small
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all(f"broadcast={large} not sent" in line for line in warnings)
    await plain.disconnect()
    await json_client.disconnect()


async def test_a_consumer_cancelled_mid_connect_leaves_nothing_behind(monkeypatch, registry):
    """Daphne cancels an application that outlives its socket (stuck on Redis, say): no presence row,
    no group membership and no gauge count stay behind."""
    open_before = open_connections()
    stuck = asyncio.Event()

    async def hang(*args, **kwargs):
        stuck.set()
        await asyncio.sleep(3600)

    monkeypatch.setattr(pushlog, "read_after", hang)
    communicator = WebsocketCommunicator(EchoConsumer.as_asgi(), "/ws/?group=red&after=0")
    assert (await communicator.connect())[0]
    await asyncio.wait_for(stuck.wait(), 3)
    assert registry.added and pushlog.tail.members and open_connections() == open_before + 1
    communicator.future.cancel()  # what Daphne's application checker does
    with contextlib.suppress(asyncio.CancelledError):
        await communicator.future
    assert_cleaned_up(registry, open_before)


async def test_a_signed_in_connection_is_in_its_user_group_and_cannot_leave_it():
    """A signed-in connection gets its user's pushes; "user:<pk>" is not among the groups it chose."""
    alice = await User.objects.acreate(username="alice")
    communicator = WebsocketCommunicator(EchoConsumer.as_asgi(), "/ws/", subprotocols=["echo.json"])
    communicator.scope["user"] = alice
    assert (await communicator.connect())[0]
    assert (await communicator.receive_json_from())["groups"] == ["all"]
    own = services.user_group(alice)
    await communicator.send_json_to({"type": "leave", "group": own})
    assert await communicator.receive_json_from() == {
        "type": "error",
        "error": f"a signed-in connection stays in its user's group {own!r}",
    }
    sent = await database_sync_to_async(services.broadcast_send)(text="for alice", user=alice)
    received = await communicator.receive_json_from(timeout=3)
    assert (received["type"], received["id"], received["group"]) == ("broadcast", sent.position, own)
    await communicator.disconnect()
    assert pushlog.tail.members == {}, pushlog.tail.members


async def signed_in_json(user, path: str = "/ws/?group=red") -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(EchoConsumer.as_asgi(), path, subprotocols=["echo.json"])
    communicator.scope["user"] = user
    assert (await communicator.connect())[0]
    assert (await communicator.receive_json_from())["type"] == "welcome"
    return communicator


async def test_say_reaches_the_room_sender_included_and_plain_members_as_text():
    """A member's say is pushed to the room as a message envelope (a plain member gets text); others
    get nothing; the record is a room message naming its sender."""
    alice = await User.objects.acreate(username="alice")
    speaker, plain = await signed_in_json(alice), await connected(EchoConsumer, "/ws/?group=red")
    outsider = await connected_json()
    await speaker.send_json_to({"type": "say", "group": "red", "text": "hello <b>red</b>"})
    message = await speaker.receive_json_from(timeout=3)
    record = await Broadcast.objects.aget(position=message["id"])
    assert message == {
        "type": "message",
        "id": record.position,
        "text": "hello <b>red</b>",
        "group": "red",
        "sender": "alice",
        "sent_at": record.sent_at.isoformat(),
    }
    assert (record.kind, record.sender_id, record.sender_label) == ("message", alice.pk, "")
    assert await plain.receive_from(timeout=3) == "Message from alice: hello <b>red</b>"
    assert await outsider.receive_nothing(timeout=0.3)
    for communicator in (speaker, plain, outsider):
        await communicator.disconnect()


SAY_REFUSED = {
    "not-a-member": (
        {"group": "blue", "text": "hi"},
        "you are not in 'blue': join it before you speak in it",
    ),
    "all": ({"group": "all", "text": "hi"}, "'all' is every connection, not a room"),
    "bad-group": ({"group": "no spaces", "text": "hi"}, "invalid group name 'no spaces'"),
    "empty": ({"group": "red", "text": "  "}, "the text is empty: say something"),
    "nul": ({"group": "red", "text": "a\x00b"}, "the text contains a NUL character at position 1"),
    "too-long": ({"group": "red", "text": "x" * 1500}, "the text is too long: its largest frame would be "),
}


@pytest.mark.parametrize("fields, error", SAY_REFUSED.values(), ids=SAY_REFUSED.keys())
async def test_a_say_that_cannot_go_gets_an_error_records_nothing_and_the_connection_stays(
    settings, fields, error
):
    """A non-member, "all", a bad group or an undeliverable text: an error envelope, nothing kept or sent."""
    settings.WEBSOCKET_MAX_MESSAGE_SIZE = 2000
    alice = await User.objects.acreate(username="alice")
    speaker, member = await signed_in_json(alice), await connected(EchoConsumer, "/ws/?group=red&group=blue")
    await speaker.send_json_to({"type": "say", **fields})
    reply = await speaker.receive_json_from(timeout=3)
    assert reply["type"] == "error" and reply["error"].startswith(error), reply
    assert not await Broadcast.objects.aexists()
    assert await member.receive_nothing(timeout=0.3)
    await speaker.send_json_to({"type": "echo", "text": "still"})
    assert (await speaker.receive_json_from())["type"] == "echo"
    await speaker.disconnect()
    await member.disconnect()


async def test_a_guest_speaks_only_when_room_speakers_is_anyone(settings):
    """ROOM_SPEAKERS=users (the default) refuses an anonymous say; anyone lets it through as guest-<id>."""
    guest = await connected_json("/ws/?group=red")
    await guest.send_json_to({"type": "say", "group": "red", "text": "hi"})
    refused = await guest.receive_json_from(timeout=3)
    assert refused == {"type": "error", "error": "only signed-in users may speak in a room: sign in first"}
    settings.ROOM_SPEAKERS = "anyone"
    await guest.send_json_to({"type": "say", "group": "red", "text": "hi"})
    message = await guest.receive_json_from(timeout=3)
    record = await Broadcast.objects.aget()
    assert message["type"] == "message" and message["sender"] == record.sender_label
    assert record.sender_label.startswith("guest-") and len(record.sender_label) == len("guest-") + 8
    await guest.disconnect()


async def test_a_say_redis_refuses_gets_an_error_and_leaves_no_record(settings, caplog):
    """With Redis unreachable: an error envelope saying it was not sent, no row, a WARNING; the
    connection stays and later says go through."""
    alice = await User.objects.acreate(username="alice")
    speaker = await signed_in_json(alice)
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # the append's client; nothing listens
    await speaker.send_json_to({"type": "say", "group": "red", "text": "lost"})
    reply = await speaker.receive_json_from(timeout=15)
    assert reply == {
        "type": "error",
        "error": "not sent: the server cannot reach its message store just now; try again",
    }
    assert not await Broadcast.objects.aexists()
    assert any("message in red not sent: Redis at" in r.getMessage() for r in caplog.records)
    await speaker.send_json_to({"type": "echo", "text": "still"})
    assert (await speaker.receive_json_from())["type"] == "echo"
    await speaker.disconnect()
