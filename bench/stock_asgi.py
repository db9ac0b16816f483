"""The stock stack: the Channels tutorial's consumer under stock Daphne, for the benchmark.

    daphne bench.stock_asgi:application   (DJANGO_SETTINGS_MODULE=bench.stock_settings)

A consumer that joins a group on connect (so that it can be pushed to), answers every text
message as ws/ does and leaves the group on disconnect, behind Channels' AuthMiddlewareStack.
None of the project's code runs: no Daphne fixes or speed-ups, no presence. The tutorial's
AllowedHostsOriginValidator is left out because it refuses clients without an Origin header,
as the load generator is.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.stock_settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

GROUP = "everyone"


class EchoConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None) -> None:
        if text_data is not None:
            await self.send(text_data=f"Server: Hello. You said: {text_data}")
        else:
            await self.send(bytes_data=bytes_data)


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AuthMiddlewareStack(URLRouter([path("ws/", EchoConsumer.as_asgi())])),
    }
)
