"""Who is on a WebSocket: Channels' session authentication, skipped for clients with no session."""

from channels.auth import AuthMiddlewareStack as ChannelsAuthMiddlewareStack
from django.conf import settings
from django.contrib.auth.models import AnonymousUser


class AuthMiddlewareStack:
    """Channels' cookie, session and auth middlewares, for the connections that carry a session cookie.

    A client without one (every script, every browser that never signed in) is anonymous: it
    goes straight to the application with ``scope["user"]`` set, without Channels' thread hop
    for a session lookup and without its session wrapper around every message sent.
    """

    def __init__(self, inner) -> None:
        self.inner = inner
        self.with_session = ChannelsAuthMiddlewareStack(inner)
        self.cookie = settings.SESSION_COOKIE_NAME.encode("latin1") + b"="

    async def __call__(self, scope, receive, send):
        for name, value in scope.get("headers", ()):
            if name == b"cookie" and self.cookie in value:
                return await self.with_session(scope, receive, send)
        return await self.inner({**scope, "user": AnonymousUser()}, receive, send)
