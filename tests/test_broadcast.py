"""The broadcast service and the broadcast command, over a real Redis."""

import sqlite3
import subprocess
import sys
import time
from io import StringIO

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from echo import pushlog, services
from echo.consumers import EchoConsumer
from echo.models import Broadcast
from tests.servers import ROOT, free_port

pytestmark = [
    pytest.mark.usefixtures("channel_layer_settings", "registry"),
    pytest.mark.django_db(transaction=True),
]


async def client(path: str = "/ws/", json: bool = False) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(
        EchoConsumer.as_asgi(), path, subprotocols=["echo.json"] if json else None
    )
    assert (await communicator.connect())[0]
    if json:
        assert (await communicator.receive_json_from())["type"] == "welcome"
    return communicator


async def test_command_reaches_connected_clients_and_records_the_broadcast():
    """manage.py broadcast TEXT: plain clients get the text, JSON clients the envelope, one line of output."""
    plain, json = await client(), await client(json=True)
    out = StringIO()
    await database_sync_to_async(call_command)("broadcast", "deploy at 5 ✓", stdout=out)
    broadcast = await Broadcast.objects.aget()
    assert (broadcast.text, broadcast.group, broadcast.sender_id, broadcast.pushed) == (
        "deploy at 5 ✓",
        "all",
        None,
        True,
    )
    assert await plain.receive_from(timeout=3) == "Server broadcast: deploy at 5 ✓"
    assert await json.receive_json_from(timeout=3) == {
        "type": "broadcast",
        "id": broadcast.position,
        "text": "deploy at 5 ✓",
        "group": "all",
        "sender": "server",
        "sent_at": broadcast.sent_at.isoformat(),
    }
    assert out.getvalue().startswith(
        f"Broadcast #{broadcast.position} sent to group 'all'; the registry knows "
    )
    assert out.getvalue().count("\n") == 1
    await plain.disconnect()
    await json.disconnect()


async def test_command_with_group_reaches_only_that_group():
    """--group red reaches clients in red and no one else."""
    red, other = await client("/ws/?group=red"), await client()
    await database_sync_to_async(call_command)("broadcast", "red only", group="red", stdout=StringIO())
    assert await red.receive_from(timeout=3) == "Server broadcast: red only"
    assert await other.receive_nothing(timeout=0.5)
    await red.disconnect()
    await other.disconnect()


async def test_service_names_the_sender():
    """A broadcast sent by a user carries their name to JSON clients."""
    alice = await get_user_model().objects.acreate(username="alice")
    json = await client(json=True)
    await database_sync_to_async(services.broadcast_send)(text="hi", sender=alice)
    assert (await json.receive_json_from(timeout=3))["sender"] == "alice"
    await json.disconnect()


@pytest.mark.parametrize(
    "args, error",
    [
        (["  "], "TEXT is empty: give the message to send."),
        (["hi", "--group", "no spaces"], "invalid group name 'no spaces'"),
    ],
)
def test_command_refuses_bad_input_with_one_line(args, error):
    """Empty text or a bad group name is a CommandError naming the problem; nothing is recorded."""
    with pytest.raises(CommandError, match=error):
        call_command("broadcast", *args, stdout=StringIO())
    assert not Broadcast.objects.exists()


def test_command_with_redis_down_exits_non_zero_with_one_line(tmp_path):
    """With nothing at REDIS_URL: exit 1 within seconds, one line on stderr, no traceback, no password."""
    env = {
        "REDIS_URL": f"redis://:s3cret@127.0.0.1:{free_port()}/0",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "PATH": "/usr/bin:/bin",
    }
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    started = time.monotonic()
    result = subprocess.run(
        [*manage, "broadcast", "hello"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert elapsed < 10
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("CommandError: Redis at redis://:***@127.0.0.1:")
    assert "is unreachable (" in lines[0] and lines[0].endswith(
        "): broadcast (record 1) is recorded but not sent"
    )
    assert "s3cret" not in result.stderr + result.stdout
    with sqlite3.connect(tmp_path / "db.sqlite3") as db:
        assert db.execute("SELECT text, pushed FROM echo_broadcast").fetchall() == [("hello", 0)]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("name", ["red", "a.b-c_9", "x" * 90])
def test_valid_group_names_pass(name):
    """Letters, digits, '-', '_' and '.' up to 90 characters make a group name."""
    assert services.validate_group_name(name) == name


@pytest.mark.parametrize("name", ["", "red\n", "no spaces", "x" * 91, "ünïcode", "a/b", "٣"])
def test_invalid_group_names_are_refused(name):
    """Anything else is refused with a message that names it."""
    with pytest.raises(services.InvalidGroupName, match="invalid group name"):
        services.validate_group_name(name)


@database_sync_to_async
def send_many(*texts: str, group: str = "all") -> list[int]:
    """Send broadcasts one after another; return their positions in the push log."""
    return [services.broadcast_send(text=text, group=group).position for text in texts]


async def resume(after: int) -> tuple[list[dict], dict]:
    """Connect a JSON client with ?after=; return the pushes replayed and the resumed envelope."""
    communicator = WebsocketCommunicator(
        EchoConsumer.as_asgi(), f"/ws/?after={after}", subprotocols=["echo.json"]
    )
    assert (await communicator.connect())[0]
    assert (await communicator.receive_json_from())["type"] == "welcome"
    replayed = []
    while (message := await communicator.receive_json_from(timeout=3))["type"] == "broadcast":
        replayed.append(message)
    await communicator.disconnect()
    return replayed, message


def delete_from_the_log(*positions: int) -> None:
    """Take pushes out of the Redis stream, as trimming or a Redis that lost its data does."""
    pushlog.sync_client().xdel(settings.PUSH_LOG_KEY, *(f"0-{position}" for position in positions))


async def test_reconnecting_client_gets_what_it_missed_in_order_then_live_ones():
    """?after=ID on connect replays the missed broadcasts of its groups, oldest first, then a summary."""
    first, second, third = await send_many("one", "two", "three")
    await send_many("elsewhere", group="blue")
    communicator = WebsocketCommunicator(
        EchoConsumer.as_asgi(), f"/ws/?after={first}&group=red", subprotocols=["echo.json"]
    )
    assert (await communicator.connect())[0]
    assert (await communicator.receive_json_from())["type"] == "welcome"
    replayed = [await communicator.receive_json_from() for _ in range(2)]
    assert [(m["type"], m["id"], m["text"]) for m in replayed] == [
        ("broadcast", second, "two"),
        ("broadcast", third, "three"),
    ]
    assert await communicator.receive_json_from() == {
        "type": "resumed",
        "after": first,
        "replayed": 2,
        "truncated": False,
    }
    (live,) = await send_many("four")
    assert (await communicator.receive_json_from(timeout=3))["id"] == live
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.disconnect()


async def test_a_resume_the_log_no_longer_holds_comes_from_the_database():
    """Pushes trimmed from the stream (or lost with Redis's data) are replayed from the database."""
    a, b, c, d = await send_many("a", "b", "c", "d")
    await database_sync_to_async(delete_from_the_log)(a, b)
    replayed, resumed = await resume(a - 1)
    assert [(m["id"], m["text"]) for m in replayed] == [(a, "a"), (b, "b"), (c, "c"), (d, "d")]
    assert resumed == {"type": "resumed", "after": a - 1, "replayed": 4, "truncated": False}


async def test_a_resume_older_than_the_log_and_the_database_is_told_truncated():
    """What neither the stream nor the database holds any more is reported, never silently short."""
    a, b, _ = await send_many("a", "b", "c")
    await database_sync_to_async(delete_from_the_log)(a, b)
    await Broadcast.objects.filter(position=a).adelete()
    replayed, resumed = await resume(a - 1)
    assert [m["text"] for m in replayed] == ["b", "c"]
    assert resumed["truncated"] is True


async def test_a_broadcast_redis_refused_is_never_replayed():
    """A broadcast whose push failed has no position and is left out of replays."""
    (before,) = await send_many("before")
    await Broadcast.objects.acreate(text="refused", group="all", pushed=False)
    (kept,) = await send_many("kept")
    replayed, _ = await resume(before)
    assert [m["id"] for m in replayed] == [kept]


async def test_plain_client_replay_and_bad_after():
    """Plain clients get missed broadcasts as text frames; a non-numeric after closes with 1008."""
    first, _ = await send_many("p1", "p2")
    plain = WebsocketCommunicator(EchoConsumer.as_asgi(), f"/ws/?after={first}")
    assert (await plain.connect())[0]
    assert await plain.receive_from() == "Server broadcast: p2"
    await plain.disconnect()
    bad = WebsocketCommunicator(EchoConsumer.as_asgi(), "/ws/?after=yesterday")
    assert (await bad.connect())[0]
    closed = await bad.receive_output()
    assert (closed["code"], closed["reason"]) == (
        1008,
        "invalid after 'yesterday': expected the id of a broadcast",
    )


UNDELIVERABLE = {
    "lone-surrogate": ("caf\udcff", "the text is not valid UTF-8: U+DCFF at position 3 is a lone surrogate"),
    "nul": ("a\x00b", "the text contains a NUL character at position 1"),
    "too-long": ("x" * 2000, "the text is too long: its largest frame would be "),
    "too-long-once-escaped": ("\x01" * 300, "the text is too long: its largest frame would be "),
}


@pytest.mark.parametrize("text, error", UNDELIVERABLE.values(), ids=UNDELIVERABLE.keys())
async def test_service_refuses_what_cannot_be_delivered_and_records_nothing(settings, text, error):
    """Lone surrogates, NUL and frames over the size limit are refused before anything is recorded or sent."""
    settings.WEBSOCKET_MAX_MESSAGE_SIZE = 2000
    plain, json = await client(), await client(json=True)
    with pytest.raises(services.InvalidBroadcast, match=error.replace("+", r"\+")):
        await send_many(text)
    assert not await Broadcast.objects.aexists()
    assert await plain.receive_nothing(timeout=0.3) and await json.receive_nothing(timeout=0.1)
    await send_many("x" * 800)  # within the limit even with the longest id, group, sender and time
    assert await plain.receive_from(timeout=3) == "Server broadcast: " + "x" * 800
    assert len((await json.receive_from(timeout=3)).encode()) <= 2000
    await plain.disconnect()
    await json.disconnect()


@pytest.mark.parametrize("text", ["a\x00b", "x" * 2000], ids=["nul", "too-long"])
def test_command_refuses_undeliverable_text_with_one_line(settings, text):
    """The command turns a refused text into a CommandError saying why; nothing is recorded."""
    settings.WEBSOCKET_MAX_MESSAGE_SIZE = 2000
    with pytest.raises(CommandError, match=r"^the text "):
        call_command("broadcast", text, stdout=StringIO())
    assert not Broadcast.objects.exists()


@pytest.mark.parametrize(
    "argument, error",
    [(b"caf\xff", "not valid UTF-8: U+DCFF at position 3"), (b"x" * 2000, "is too long")],
    ids=["undecodable", "too-long"],
)
def test_command_line_text_that_cannot_be_delivered_exits_1_with_one_line(tmp_path, argument, error):
    """manage.py broadcast with bytes that are not UTF-8, or too long: one CommandError line, exit 1."""
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "WEBSOCKET_MAX_MESSAGE_SIZE": "2000",
        "PATH": "/usr/bin:/bin",
        "LC_ALL": "C.UTF-8",
    }
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    result = subprocess.run([*manage, "broadcast", argument], cwd=ROOT, env=env, capture_output=True)
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith("CommandError: the text ") and error in stderr
    with sqlite3.connect(tmp_path / "db.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM echo_broadcast").fetchone() == (0,)


async def test_a_stored_broadcast_too_large_to_deliver_is_skipped_in_a_replay(settings, caplog):
    """An old broadcast over the size limit is left out of a replay with a WARNING; the rest arrive."""
    first, before = await send_many("one", "two")
    push = {"text": "x" * 3000, "group": "all", "sender": "server", "sent_at": "2026-01-01T00:00:00+00:00"}
    huge = await sync_to_async(pushlog.append)(push, floor=0)  # pushed before sizes were checked
    (after,) = await send_many("three")
    settings.WEBSOCKET_MAX_MESSAGE_SIZE = 2000
    communicator = WebsocketCommunicator(
        EchoConsumer.as_asgi(), f"/ws/?after={first}", subprotocols=["echo.json"]
    )
    assert (await communicator.connect())[0]
    assert (await communicator.receive_json_from())["type"] == "welcome"
    assert [(await communicator.receive_json_from())["id"] for _ in range(2)] == [before, after]
    assert await communicator.receive_json_from() == {
        "type": "resumed",
        "after": first,
        "replayed": 2,
        "truncated": False,
    }
    assert any(f"broadcast={huge} not sent" in r.getMessage() for r in caplog.records)
    plain = WebsocketCommunicator(EchoConsumer.as_asgi(), f"/ws/?after={first}")
    assert (await plain.connect())[0]
    assert [await plain.receive_from() for _ in range(2)] == [
        "Server broadcast: two",
        "Server broadcast: three",
    ]
    await plain.send_to(text_data="still open")
    assert await plain.receive_from() == "Server: Hello. You said: still open"
    await plain.disconnect()
    await communicator.disconnect()


async def test_a_position_another_record_holds_is_kept_without_it(monkeypatch, caplog):
    """Should Redis lose its data between one sender's append and its save, a second sender may get the
    same position: its push still went out, and it is recorded (without the position), no traceback."""
    top = int(await sync_to_async(pushlog.sync_client().get)(pushlog.counter_key()) or 0)
    await Broadcast.objects.acreate(text="the first sender's", group="all", position=top + 1)
    monkeypatch.setattr(pushlog, "stored_top", lambda: 0)  # as if that row were not saved yet
    assert await send_many("mine") == [None]
    mine = await Broadcast.objects.aget(text="mine")
    assert (mine.position, mine.pushed) == (None, True)
    assert any("position already recorded" in r.getMessage() for r in caplog.records)


async def user_client(user, path: str = "/ws/", json: bool = False) -> WebsocketCommunicator:
    """A ws/ client signed in as ``user`` (the scope the session middleware would make)."""
    communicator = WebsocketCommunicator(
        EchoConsumer.as_asgi(), path, subprotocols=["echo.json"] if json else None
    )
    communicator.scope["user"] = user
    assert (await communicator.connect())[0]
    if json:
        assert (await communicator.receive_json_from())["type"] == "welcome"
    return communicator


async def test_a_push_to_a_user_reaches_every_connection_of_theirs_and_no_one_else():
    """broadcast_send(user=...) reaches both of alice's tabs, not bob's nor an anonymous client's."""
    alice = await get_user_model().objects.acreate(username="alice")
    bob = await get_user_model().objects.acreate(username="bob")
    tab, other_tab = await user_client(alice, json=True), await user_client(alice)
    bobs, anonymous = await user_client(bob), await client()
    sent = await database_sync_to_async(services.broadcast_send)(text="just you", user=alice)
    assert (sent.group, sent.recipient_id, sent.kind) == (f"user:{alice.pk}", alice.pk, "broadcast")
    received = await tab.receive_json_from(timeout=3)
    assert (received["type"], received["id"], received["group"]) == ("broadcast", sent.position, sent.group)
    assert await other_tab.receive_from(timeout=3) == "Server broadcast: just you"
    assert await bobs.receive_nothing(timeout=0.5) and await anonymous.receive_nothing(timeout=0.1)
    for communicator in (tab, other_tab, bobs, anonymous):
        await communicator.disconnect()


def test_a_push_to_a_group_and_a_user_at_once_is_refused():
    """A group and a user together say two different things: refused, nothing recorded."""
    alice = get_user_model().objects.create(username="alice")
    with pytest.raises(services.InvalidBroadcast, match="give a group or a user, not both"):
        services.broadcast_send(text="x", group="red", user=alice)
    with pytest.raises(services.InvalidBroadcast, match="is not saved"):
        services.broadcast_send(text="x", user=get_user_model()(username="ghost"))
    assert not Broadcast.objects.exists()


async def test_a_resume_replays_the_users_own_pushes_and_nobody_elses():
    """After ?after=, alice gets what was pushed to her while away, not what went to bob."""
    alice = await get_user_model().objects.acreate(username="alice")
    bob = await get_user_model().objects.acreate(username="bob")
    (before,) = await send_many("before")
    mine = await database_sync_to_async(services.broadcast_send)(text="for alice", user=alice)
    await database_sync_to_async(services.broadcast_send)(text="for bob", user=bob)
    (everyone,) = await send_many("for all")
    back = await user_client(alice, f"/ws/?after={before}", json=True)
    replayed = [await back.receive_json_from(timeout=3) for _ in range(2)]
    assert [(m["id"], m["text"]) for m in replayed] == [(mine.position, "for alice"), (everyone, "for all")]
    assert (await back.receive_json_from())["type"] == "resumed"
    await back.disconnect()


async def test_command_with_user_reaches_only_that_user():
    """--user NAME reaches that user's connections, and says so in one line."""
    alice = await get_user_model().objects.acreate(username="alice")
    tab, anonymous = await user_client(alice), await client()
    out = StringIO()
    await database_sync_to_async(call_command)("broadcast", "hi alice", user="alice", stdout=out)
    broadcast = await Broadcast.objects.aget()
    assert broadcast.recipient_id == alice.pk
    assert await tab.receive_from(timeout=3) == "Server broadcast: hi alice"
    assert await anonymous.receive_nothing(timeout=0.5)
    assert out.getvalue().startswith(
        f"Broadcast #{broadcast.position} sent to user 'alice'; the registry knows "
    )
    await tab.disconnect()
    await anonymous.disconnect()


def test_command_with_an_unknown_user_exits_1_with_one_line(tmp_path):
    """manage.py broadcast --user nobody: one CommandError line, exit 1, nothing recorded."""
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "PATH": "/usr/bin:/bin"}
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    result = subprocess.run(
        [*manage, "broadcast", "hi", "--user", "nobody"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr == "CommandError: no user named 'nobody'\n"
    with sqlite3.connect(tmp_path / "db.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM echo_broadcast").fetchone() == (0,)


def test_the_size_check_covers_room_messages_plain_and_json():
    """largest_broadcast_frame is at least any real frame of a broadcast or a room message, whatever
    the sender (a 150-character name of 4-byte characters, a label of escaped ones)."""
    text = "x" * 100
    longest = {
        "id": services.MAX_BROADCAST_ID,
        "text": text,
        "group": "g" * services.GROUP_NAME_MAX,
        "sent_at": services.LONGEST_SENT_AT,
    }
    frames = [
        services.push_frame({**longest, "kind": kind, "sender": sender}, as_json=as_json)
        for kind in ("broadcast", "message")
        for sender in ("\U0001f600" * 150, "\x01" * 150)
        for as_json in (True, False)
    ]
    assert frames[-1] == "Message from " + "\x01" * 150 + ": " + text  # a plain client's room message
    largest = max(len(frame.encode()) for frame in frames)
    assert services.largest_broadcast_frame(text) == largest


def test_an_unknown_room_speakers_value_stops_every_command_with_one_line():
    """ROOM_SPEAKERS must be users or anyone: anything else is one line on stderr and exit 2."""
    env = {"ROOM_SPEAKERS": "everyone", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert (result.returncode, result.stderr) == (
        2,
        "ROOM_SPEAKERS must be users or anyone, not 'everyone'.\n",
    )
