"""The README's "Build on it" section, run: its consumer, routed before the catch-all, tested through
Channels' WebsocketCommunicator and live under Daphne. The README's code blocks are this file's code
(the last test checks it), so that what it shows works."""

import re

import pytest
import websockets

# First: it sets Django up (Daphne imports this module for the live test, as it does project.asgi).
from project.asgi import django_asgi_app

# isort: split
from channels.db import database_sync_to_async
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models.signals import post_save
from django.http import HttpResponse
from django.test import RequestFactory
from django.urls import re_path

from echo import routing, services
from echo.auth import AuthMiddlewareStack
from echo.consumers import BaseConsumer
from echo.origin import AllowedHostsOriginValidator
from tests.servers import ROOT, DaphneServer

pytestmark = pytest.mark.usefixtures("channel_layer_settings")


class ShoutConsumer(BaseConsumer):
    """ws/shout/: answer text in capitals."""

    async def receive(self, text_data=None, bytes_data=None):
        if text_data is not None:
            await self.send(text_data=text_data.upper())


# echo/routing.py with the route added where the README says: before the catch-all.
*served, catch_all = routing.websocket_urlpatterns
websocket_urlpatterns = [*served, re_path(r"^ws/shout/?$", ShoutConsumer.as_asgi()), catch_all]
# project/asgi.py's application, with those routes (Daphne serves this module in the live test).
application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)


@pytest.fixture(scope="module")
def daphne(daphne_env):
    """A live Daphne serving this module's application: the project with the route added."""
    server = DaphneServer(env=daphne_env, app="tests.test_build_on_it:application").start()
    yield server
    server.stop()
    server.assert_no_tracebacks()


async def test_shout_answers_in_capitals():
    communicator = WebsocketCommunicator(application, "/ws/shout/")
    connected, _ = await communicator.connect()
    assert connected
    await communicator.send_to(text_data="hello")
    assert await communicator.receive_from() == "HELLO"
    await communicator.disconnect()


async def test_shout_live(daphne):
    async with websockets.connect(daphne.ws_url + "/ws/shout/") as ws:
        await ws.send("hello")
        assert await ws.recv() == "HELLO"


async def test_a_route_after_the_catch_all_is_never_reached():
    """Why the README says "before the catch-all": after it, the route is refused (403)."""
    late = [*routing.websocket_urlpatterns, re_path(r"^ws/shout/?$", ShoutConsumer.as_asgi())]
    communicator = WebsocketCommunicator(URLRouter(late), "/ws/shout/")
    connected, _ = await communicator.connect()
    assert not connected


def announce(request):
    """A view: push what the form says to a group."""
    services.broadcast_send(text=request.POST["text"], group="staff", sender=request.user)
    return HttpResponse(status=204)


def welcome(sender, instance, created, **kwargs):
    if created:
        # After the commit: a rollback must not have told everyone.
        transaction.on_commit(lambda: services.broadcast_send(text=f"{instance.username} joined"))


async def listener(path: str) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, path)
    assert (await communicator.connect())[0]
    return communicator


@pytest.mark.usefixtures("registry")
@pytest.mark.django_db(transaction=True)
async def test_a_view_and_a_signal_push_to_connected_clients():
    staff, everyone = await listener("/ws/?group=staff"), await listener("/ws/")

    def post() -> HttpResponse:
        request = RequestFactory().post("/announce/", {"text": "deploy at noon"})
        request.user = User.objects.create_user("alice")
        return announce(request)

    assert (await database_sync_to_async(post)()).status_code == 204
    assert await staff.receive_from(timeout=3) == "Server broadcast: deploy at noon"
    assert await everyone.receive_nothing(timeout=0.3)
    post_save.connect(welcome, sender=User)
    try:
        await database_sync_to_async(lambda: User.objects.create_user("carol"))()
    finally:
        post_save.disconnect(welcome, sender=User)
    for communicator in (staff, everyone):
        assert await communicator.receive_from(timeout=3) == "Server broadcast: carol joined"
        await communicator.disconnect()


def test_the_readmes_code_is_this_files_code():
    """Every Python block of the README's "Build on it" is here, line for line, and runs above."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Build on it\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) >= 4, "the section shows a consumer, its route, its tests, a push"
    assert section.index("ShoutConsumer.as_asgi()") < section.index("NoRouteConsumer.as_asgi()"), (
        "before the catch-all"
    )
    here = (ROOT / "tests" / "test_build_on_it.py").read_text() + (ROOT / "echo" / "routing.py").read_text()
    for block in blocks:
        for line in block.splitlines():
            if line.strip() and not line.lstrip().startswith(("#", "@", "from ", "import ", "pytestmark")):
                assert line.strip() in here, f"README line not in the tested code: {line!r}"
