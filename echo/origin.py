"""The WebSocket Origin policy: browsers must come from an allowed host, other clients may connect."""

import logging
from urllib.parse import urlparse

from channels.security.websocket import OriginValidator, WebsocketDenier
from django.conf import settings

logger = logging.getLogger(__name__)


class AllowedHostsOriginValidator(OriginValidator):
    """Reject a handshake whose Origin header matches no ``ALLOWED_HOSTS`` entry; log why.

    Channels' own validator also rejects a handshake with no Origin header at all, which
    shuts out every non-browser client (scripts, load tools, the raw handshake). Browsers
    always send Origin on a WebSocket handshake, so its absence is no cross-site risk.
    """

    def __init__(self, application):
        super().__init__(application, settings.ALLOWED_HOSTS)

    async def __call__(self, scope, receive, send):
        origin = None
        for name, value in scope.get("headers", []):
            if name == b"origin":
                origin = value.decode("latin1")
        if origin is None or self.validate_origin(urlparse(origin)):
            return await self.application(scope, receive, send)
        client = scope.get("client") or ("-", "-")
        logger.warning(
            "handshake rejected peer=%s:%s path=%s: Origin %r matches no entry of ALLOWED_HOSTS %s",
            client[0],
            client[1],
            scope.get("path"),
            origin,
            self.allowed_origins,
        )
        return await WebsocketDenier()(scope, receive, send)
