"""WebSocket routes.

``ws`` and ``ws/raw`` are served with or without the trailing slash: the walkthrough this project
descends from opens ``/ws``, and a WebSocket client cannot follow a redirect to ``/ws/``.
"""

from django.urls import re_path

from echo import consumers

websocket_urlpatterns = [
    re_path(r"^ws/?$", consumers.EchoConsumer.as_asgi()),
    re_path(r"^ws/raw/?$", consumers.RawEchoConsumer.as_asgi()),
    # The catch-all: it must stay last, or it takes every route after it.
    re_path(r"", consumers.NoRouteConsumer.as_asgi()),
]
