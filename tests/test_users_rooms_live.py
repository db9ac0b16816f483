"""Pushes to one user and room messages, across two live Daphne processes sharing one Redis.

Clients sign in with a session cookie, made in the live database as Django's login() makes it.
"""

import asyncio
import json
import re
import subprocess
import sys
import uuid

import pytest
import websockets

from tests.servers import ROOT, DaphneServer
from tests.test_push_live import broadcast

SIGN_IN = """
import sys
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
user, _ = get_user_model().objects.get_or_create(username=sys.argv[-1])
session = SessionStore()
session[SESSION_KEY] = str(user.pk)
session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
session[HASH_SESSION_KEY] = user.get_session_auth_hash()
session.create()
print(session.session_key)
"""


def sign_in(env: dict[str, str], username: str) -> str:
    """Make ``username`` (a new user if need be) a session in the live database; return its cookie."""
    result = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); exec({SIGN_IN!r})", username],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "project.settings"},
        capture_output=True,
        text=True,
        check=True,
    )
    return f"sessionid={result.stdout.strip()}"


def name(prefix: str) -> str:
    """A username of this test's own: the live database is shared by the session."""
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def open_client(
    server: DaphneServer, query: str = "", cookie: str | None = None, json_protocol: bool = True
) -> tuple[websockets.ClientConnection, dict | None]:
    """Connect to ws/ (signed in with ``cookie`` if given); return the socket and its welcome."""
    ws = await websockets.connect(
        f"{server.ws_url}/ws/{query}",
        subprotocols=["echo.json"] if json_protocol else None,
        additional_headers={"Cookie": cookie} if cookie else None,
        open_timeout=30,
    )
    welcome = json.loads(await asyncio.wait_for(ws.recv(), 5)) if json_protocol else None
    return ws, welcome


async def next_push(ws, timeout: float = 5) -> dict | str:
    """Return the next frame that is not a presence count: an envelope, or a plain client's text."""
    async with asyncio.timeout(timeout):
        while True:
            frame = await ws.recv()
            if not frame.startswith("{"):
                return frame
            message = json.loads(frame)
            if message["type"] != "presence":
                return message


async def gets_nothing(ws, wait: float = 1.0) -> bool:
    with pytest.raises(TimeoutError):
        await next_push(ws, timeout=wait)
    return True


def pushed_id(result: subprocess.CompletedProcess) -> int:
    assert result.returncode == 0, result.stderr
    return int(re.match(r"Broadcast #(\d+) sent to ", result.stdout).group(1))


async def replayed_until_resumed(ws) -> list[dict]:
    """Return the pushes a resuming client gets before its resumed envelope."""
    replayed = []
    while (message := await next_push(ws, timeout=10))["type"] != "resumed":
        replayed.append(message)
    return replayed


async def test_a_push_to_a_user_reaches_their_tabs_on_both_processes_and_nobody_else(
    daphne, daphne_b, daphne_env
):
    """manage.py broadcast --user: both of the user's tabs (one per process) get it; another
    signed-in user and an anonymous client do not."""
    alice, bob = name("alice"), name("bob")
    alice_cookie, bob_cookie = sign_in(daphne_env, alice), sign_in(daphne_env, bob)
    tab, welcome = await open_client(daphne, cookie=alice_cookie)
    other_tab, _ = await open_client(daphne_b, cookie=alice_cookie, json_protocol=False)
    bobs, _ = await open_client(daphne_b, cookie=bob_cookie)
    anonymous, _ = await open_client(daphne)
    assert welcome["user"] == alice and welcome["groups"] == ["all"]
    result = broadcast(daphne_env, "only for alice", "--user", alice)
    assert re.fullmatch(
        rf"Broadcast #\d+ sent to user '{alice}'; the registry knows \d+ live connection\(s\) of theirs\.\n",
        result.stdout,
    )
    message = await next_push(tab)
    assert message["type"] == "broadcast" and message["id"] == pushed_id(result)
    assert message["text"] == "only for alice" and re.fullmatch(r"user:\d+", message["group"])
    assert await next_push(other_tab) == "Server broadcast: only for alice"
    assert await gets_nothing(bobs) and await gets_nothing(anonymous, wait=0.2)
    for ws in (tab, other_tab, bobs, anonymous):
        await ws.close()


async def test_a_users_missed_pushes_come_back_on_reconnect_and_nobody_elses(daphne, daphne_b, daphne_env):
    """Pushes to alice and to bob while both were away: each resume replays its own user's only."""
    alice, bob = name("alice"), name("bob")
    alice_cookie, bob_cookie = sign_in(daphne_env, alice), sign_in(daphne_env, bob)
    away, welcome = await open_client(daphne, cookie=alice_cookie)
    await away.close()
    for_alice = pushed_id(broadcast(daphne_env, "missed by alice", "--user", alice))
    for_bob = pushed_id(broadcast(daphne_env, "missed by bob", "--user", bob))
    after = f"?after={welcome['last_broadcast']}"
    alice_back, _ = await open_client(daphne_b, after, cookie=alice_cookie)
    bob_back, _ = await open_client(daphne, after, cookie=bob_cookie)
    assert [(m["id"], m["text"]) for m in await replayed_until_resumed(alice_back)] == [
        (for_alice, "missed by alice")
    ]
    assert [(m["id"], m["text"]) for m in await replayed_until_resumed(bob_back)] == [
        (for_bob, "missed by bob")
    ]
    await alice_back.close()
    await bob_back.close()


async def test_a_room_message_reaches_the_room_on_both_processes_and_is_replayed(
    daphne, daphne_b, daphne_env
):
    """alice says in red: every member of red on both processes gets it (alice too; a plain member
    as text), a non-member gets nothing; a member away meanwhile gets it back with ?after=."""
    room = f"red-{uuid.uuid4().hex[:6]}"
    alice, bob = name("alice"), name("bob")
    alice_cookie, bob_cookie = sign_in(daphne_env, alice), sign_in(daphne_env, bob)
    speaker, _ = await open_client(daphne, f"?group={room}", cookie=alice_cookie)
    member, _ = await open_client(daphne_b, f"?group={room}", cookie=bob_cookie)
    plain_member, _ = await open_client(daphne_b, f"?group={room}", json_protocol=False)
    outsider, _ = await open_client(daphne, "?group=blue")
    away, welcome = await open_client(daphne_b, f"?group={room}")
    await away.close()

    await speaker.send(json.dumps({"type": "say", "group": room, "text": "hi <script>x</script>"}))
    said = await next_push(speaker)
    assert said == {
        "type": "message",
        "id": said["id"],
        "text": "hi <script>x</script>",
        "group": room,
        "sender": alice,
        "sent_at": said["sent_at"],
    }
    assert await next_push(member) == said
    assert await next_push(plain_member) == f"Message from {alice}: hi <script>x</script>"
    assert await gets_nothing(outsider)

    back, _ = await open_client(daphne, f"?group={room}&after={welcome['last_broadcast']}")
    assert await replayed_until_resumed(back) == [said]
    for ws in (speaker, member, plain_member, outsider, back):
        await ws.close()


async def test_a_non_member_and_an_anonymous_speaker_get_an_error_and_stay_connected(
    daphne, daphne_b, daphne_env
):
    """By default (ROOM_SPEAKERS=users) a guest may not speak; nor may a user outside the room.
    Each gets an error envelope, nobody gets a message, and the connection goes on."""
    room = f"green-{uuid.uuid4().hex[:6]}"
    member, _ = await open_client(daphne_b, f"?group={room}")
    guest, _ = await open_client(daphne, f"?group={room}")
    outsider, _ = await open_client(daphne, cookie=sign_in(daphne_env, name("dave")))
    for ws, error in [
        (guest, "only signed-in users may speak in a room: sign in first"),
        (outsider, f"you are not in '{room}': join it before you speak in it"),
    ]:
        await ws.send(json.dumps({"type": "say", "group": room, "text": "let me in"}))
        assert await next_push(ws) == {"type": "error", "error": error}
        await ws.send(json.dumps({"type": "echo", "text": "still here"}))
        assert (await next_push(ws))["type"] == "echo"
    assert await gets_nothing(member)
    for ws in (member, guest, outsider):
        await ws.close()


async def test_guests_speak_where_room_speakers_is_anyone(start_daphne, daphne):
    """ROOM_SPEAKERS=anyone: a guest's say goes out as guest-<its connection id>, to members of the
    room on another process too."""
    open_to_guests = start_daphne(ROOM_SPEAKERS="anyone")
    room = f"lobby-{uuid.uuid4().hex[:6]}"
    guest, welcome = await open_client(open_to_guests, f"?group={room}")
    member, _ = await open_client(daphne, f"?group={room}")
    await guest.send(json.dumps({"type": "say", "group": room, "text": "hello from a guest"}))
    said = await next_push(guest)
    assert (said["type"], said["sender"]) == ("message", f"guest-{welcome['connection']}")
    assert await next_push(member) == said
    await guest.close()
    await member.close()
