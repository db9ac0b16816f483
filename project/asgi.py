"""The ASGI application Daphne serves: Django for HTTP, the echo consumers for WebSockets."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
# Set Django up before anything imports models (the auth middleware does).
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from echo import metrics  # noqa: E402
from echo.auth import AuthMiddlewareStack  # noqa: E402
from echo.origin import AllowedHostsOriginValidator  # noqa: E402
from echo.presence import registry  # noqa: E402
from echo.routing import websocket_urlpatterns  # noqa: E402
from project import channels_speedups, daphne_deflate, daphne_fixes, daphne_speedups, gc_policy  # noqa: E402

daphne_speedups.apply(event_loop=settings.EVENT_LOOP)
channels_speedups.apply()
daphne_fixes.apply(on_shutdown=[registry.shutdown], on_slow_client=metrics.slow_client_closes.inc)
daphne_deflate.apply(
    mode=settings.WEBSOCKET_COMPRESSION,
    min_size=settings.WEBSOCKET_COMPRESSION_MIN_SIZE,
    max_message_size=settings.WEBSOCKET_MAX_MESSAGE_SIZE,
)

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)

# Last: what start-up made lives as long as the process, out of the collector's way.
gc_policy.apply(
    on_collection=lambda generation, seconds: metrics.gc_pauses.labels(generation).observe(seconds)
)
