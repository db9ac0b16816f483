"""WebSocket routes."""

from django.urls import path, re_path

from echo import consumers

websocket_urlpatterns = [
    path("ws/", consumers.EchoConsumer.as_asgi()),
    path("ws/raw/", consumers.RawEchoConsumer.as_asgi()),
    re_path(r"", consumers.NoRouteConsumer.as_asgi()),
]
