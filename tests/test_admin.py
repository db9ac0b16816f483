"""The admin: sending broadcasts, their history, live connections and the disconnect action."""

import asyncio
from io import StringIO

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.test import AsyncClient

from echo import services
from echo.consumers import EchoConsumer
from echo.models import Broadcast

pytestmark = [
    pytest.mark.usefixtures("channel_layer_settings", "registry"),
    pytest.mark.django_db(transaction=True),
]


async def signed_in(*permissions: str, superuser: bool = False) -> AsyncClient:
    @database_sync_to_async
    def make_user() -> User:
        user = User.objects.create_user("alice", password="pw", is_staff=True, is_superuser=superuser)
        for codename in permissions:
            user.user_permissions.add(Permission.objects.get(codename=codename))
        return user

    client = AsyncClient()
    await client.aforce_login(await make_user())
    return client


async def ws_client(path: str = "/ws/") -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(EchoConsumer.as_asgi(), path)
    assert (await communicator.connect())[0]
    return communicator


async def test_saving_a_broadcast_in_the_admin_sends_it():
    """A staff user with the add permission composes a broadcast; saving records and sends it."""
    listener = await ws_client()
    client = await signed_in("add_broadcast", "view_broadcast")
    response = await client.post(
        "/admin/echo/broadcast/add/", {"text": "from the admin", "group": "all"}, follow=True
    )
    assert response.status_code == 200
    broadcast = await Broadcast.objects.select_related("sender").aget()
    assert (broadcast.text, broadcast.group, broadcast.sender.username) == ("from the admin", "all", "alice")
    assert f"Broadcast #{broadcast.position} sent to group &#x27;all&#x27;" in response.content.decode()
    assert await listener.receive_from(timeout=3) == "Server broadcast: from the admin"
    await listener.disconnect()


async def test_admin_rejects_a_bad_group_and_sends_nothing():
    """An invalid group name is a form error; nothing is recorded or sent."""
    listener = await ws_client()
    client = await signed_in("add_broadcast", "view_broadcast")
    response = await client.post("/admin/echo/broadcast/add/", {"text": "x", "group": "bad name"})
    assert response.status_code == 200
    assert "invalid group name" in response.content.decode()
    assert not await Broadcast.objects.aexists()
    assert await listener.receive_nothing(timeout=0.3)
    await listener.disconnect()


async def test_staff_without_permission_cannot_send():
    """Being staff is not enough: without add_broadcast the add page is forbidden."""
    client = await signed_in("view_broadcast")
    assert (await client.get("/admin/echo/broadcast/add/")).status_code == 403
    response = await client.post("/admin/echo/broadcast/add/", {"text": "x", "group": "all"})
    assert response.status_code == 403
    assert not await Broadcast.objects.aexists()


async def test_broadcast_history_is_searchable_and_read_only():
    """The history lists broadcasts with search and filters; a sent broadcast cannot be edited."""
    await Broadcast.objects.acreate(text="alpha release", group="all")
    await Broadcast.objects.acreate(text="beta release", group="red")
    client = await signed_in(superuser=True)
    page = (await client.get("/admin/echo/broadcast/?q=alpha")).content.decode()
    assert "alpha release" in page and "beta release" not in page
    page = (await client.get("/admin/echo/broadcast/?group=red")).content.decode()
    assert "beta release" in page and "alpha release" not in page
    first = await Broadcast.objects.aget(text="alpha release")
    change_page = (await client.get(f"/admin/echo/broadcast/{first.pk}/change/")).content.decode()
    assert 'name="_save"' not in change_page


async def test_live_connections_are_listed_and_can_be_disconnected(registry):
    """The admin lists live connections; the disconnect action closes the chosen one with 4000."""
    chosen, other = await ws_client("/ws/?group=red"), await ws_client()
    await registry.flush()
    client = await signed_in(superuser=True)
    page = (await client.get("/admin/echo/connection/")).content.decode()
    rows = await database_sync_to_async(lambda: {c.groups: c.id for c in services.live_connections()})()
    assert set(rows) == {"all,red", "all"}
    assert rows["all,red"] in page and rows["all"] in page
    response = await client.post(
        "/admin/echo/connection/", {"action": "disconnect_selected", "_selected_action": [rows["all,red"]]}
    )
    assert response.status_code == 302
    closed = await chosen.receive_output(timeout=3)
    assert closed == {"type": "websocket.close", "code": 4000, "reason": "disconnected by alice"}
    assert await other.receive_nothing(timeout=0.3)
    await other.disconnect()


async def test_disconnect_needs_its_permission(registry):
    """A staff user who may only view connections is not offered, and cannot use, the action."""
    listener = await ws_client()
    await registry.flush()
    client = await signed_in("view_connection")
    page = (await client.get("/admin/echo/connection/")).content.decode()
    assert "disconnect_selected" not in page
    connection_id = next(iter(registry.listeners))
    await client.post(
        "/admin/echo/connection/", {"action": "disconnect_selected", "_selected_action": [connection_id]}
    )
    await asyncio.sleep(0.3)
    assert await listener.receive_nothing(timeout=0.3)
    await listener.disconnect()


async def test_admin_refuses_a_broadcast_too_large_to_deliver(settings):
    """A text whose frame would pass the size limit is a form error on the text; nothing is sent."""
    settings.WEBSOCKET_MAX_MESSAGE_SIZE = 2000
    listener = await ws_client()
    client = await signed_in("add_broadcast", "view_broadcast")
    response = await client.post("/admin/echo/broadcast/add/", {"text": "x" * 2000, "group": "all"})
    assert response.status_code == 200
    form = response.context["adminform"].form
    assert form.errors["text"][0].startswith("the text is too long: its largest frame would be ")
    assert not await Broadcast.objects.aexists()
    assert await listener.receive_nothing(timeout=0.3)
    await listener.disconnect()


async def test_history_tells_refused_broadcasts_apart_and_filters_them():
    """A broadcast Redis refused is marked as not sent, in its own column, with a filter for it."""
    await Broadcast.objects.acreate(text="went out", group="all")
    await Broadcast.objects.acreate(text="never left", group="all", pushed=False)
    client = await signed_in(superuser=True)
    page = (await client.get("/admin/echo/broadcast/")).content.decode()
    rows = {
        text: row.split("</tr>")[0]
        for row in page.split("<tr")[1:]
        for text in ("went out", "never left")
        if text in row
    }
    assert '<td class="field-delivery">sent</td>' in rows["went out"]
    assert "refused by Redis" in rows["never left"] and "refused by Redis" not in rows["went out"]
    refused = (await client.get("/admin/echo/broadcast/?delivery=refused")).content.decode()
    assert "never left" in refused and "went out" not in refused
    sent = (await client.get("/admin/echo/broadcast/?delivery=sent")).content.decode()
    assert "went out" in sent and "never left" not in sent


async def test_a_broadcast_from_the_command_line_names_its_sender():
    """No user sent it: the history says "server", as its clients see it, not Django's "-"."""
    call = database_sync_to_async(lambda: call_command("broadcast", "from a script", stdout=StringIO()))
    await call()
    client = await signed_in(superuser=True)
    page = (await client.get("/admin/echo/broadcast/")).content.decode()
    row = next(row for row in page.split("<tr")[1:] if "from a script" in row)
    assert '<td class="field-sent_by">server</td>' in row, row
    broadcast = await Broadcast.objects.aget(text="from a script")
    detail = (await client.get(f"/admin/echo/broadcast/{broadcast.pk}/change/")).content.decode()
    assert '<div class="readonly">server</div>' in detail


async def test_the_admin_sends_to_one_user_and_refuses_a_group_with_a_user_or_an_unknown_user():
    """The user field sends to every connection of that user and no one else; a user with a group,
    or a name nobody has, is a form error and nothing is sent."""
    client = await signed_in("add_broadcast", "view_broadcast")
    bob = await User.objects.acreate(username="bob")
    bobs = WebsocketCommunicator(EchoConsumer.as_asgi(), "/ws/")
    bobs.scope["user"] = bob
    assert (await bobs.connect())[0]
    other = await ws_client()
    for fields, error in [
        ({"group": "red", "user": "bob"}, "Give a group or a user, not both"),
        ({"group": "all", "user": "nobody"}, "no user named &#x27;nobody&#x27;"),
    ]:
        response = await client.post("/admin/echo/broadcast/add/", {"text": "x", **fields})
        assert response.status_code == 200 and error in response.content.decode()
    assert not await Broadcast.objects.aexists()
    response = await client.post(
        "/admin/echo/broadcast/add/", {"text": "for bob", "group": "all", "user": "bob"}, follow=True
    )
    broadcast = await Broadcast.objects.aget()
    assert (broadcast.group, broadcast.recipient_id) == (services.user_group(bob), bob.pk)
    assert f"Broadcast #{broadcast.position} sent to user &#x27;bob&#x27;" in response.content.decode()
    assert await bobs.receive_from(timeout=3) == "Server broadcast: for bob"
    assert await other.receive_nothing(timeout=0.3)
    detail = (await client.get(f"/admin/echo/broadcast/{broadcast.pk}/change/")).content.decode()
    assert f'<a href="/admin/auth/user/{bob.pk}/change/">bob</a></div>' in detail  # its recipient
    await bobs.disconnect()
    await other.disconnect()


async def test_history_shows_room_messages_with_their_kind_and_sender():
    """A room message is listed as such, with its guest sender; the kind filters the list."""
    await Broadcast.objects.acreate(
        text="said in red", group="red", kind="message", sender_label="guest-1a2b3c4d"
    )
    await Broadcast.objects.acreate(text="from the server", group="all")
    client = await signed_in(superuser=True)
    page = (await client.get("/admin/echo/broadcast/")).content.decode()
    row = next(row for row in page.split("<tr")[1:] if "said in red" in row)
    assert '<td class="field-kind">room message</td>' in row and "guest-1a2b3c4d" in row, row
    messages = (await client.get("/admin/echo/broadcast/?kind=message")).content.decode()
    assert "said in red" in messages and "from the server" not in messages


async def test_live_connections_can_be_filtered_by_user(registry):
    """A user's name in the list links to the list of that user's connections only."""
    carol = await User.objects.acreate(username="carol")
    carols = WebsocketCommunicator(EchoConsumer.as_asgi(), "/ws/?group=red")
    carols.scope["user"] = carol
    assert (await carols.connect())[0]
    anonymous = await ws_client()
    await registry.flush()
    client = await signed_in(superuser=True)
    page = (await client.get("/admin/echo/connection/")).content.decode()
    link = f'<a href="?user={carol.pk}" title="Only carol&#x27;s connections">carol</a>'
    assert link in page
    rows = await database_sync_to_async(lambda: {c.user_id: c.id for c in services.live_connections()})()
    filtered = (await client.get(f"/admin/echo/connection/?user={carol.pk}")).content.decode()
    assert rows[carol.pk] in filtered and rows[None] not in filtered
    await carols.disconnect()
    await anonymous.disconnect()
