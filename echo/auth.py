"""Who is on a WebSocket: a token (echo/tokens.py), else the session, skipped for clients with no cookie."""

import logging

from channels.auth import AuthMiddlewareStack as ChannelsAuthMiddlewareStack
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.db import DatabaseError

from echo import tokens

logger = logging.getLogger(__name__)

BEARER_SCHEME = "bearer"
# A browser offers its token as a subprotocol entry: new WebSocket(url, ["echo.json", "bearer." + token]).
BEARER_SUBPROTOCOL = "bearer."


class AuthMiddlewareStack:
    """Put the connection's user in ``scope["user"]``.

    A token, in an ``Authorization: Bearer`` header or a ``bearer.TOKEN`` subprotocol entry, makes
    the connection its user's (a session cookie beside it is ignored: the token is the credential
    this client chose); an invalid one refuses the handshake with 403 and a WARNING that names
    the peer and why, never the token. Without a token, Channels' cookie, session and auth
    middlewares run for a connection that carries a session cookie. A client with neither (every
    script, every browser that never signed in) is anonymous: it goes straight to the application,
    without Channels' thread hop for a session lookup and its session wrapper around every send.
    """

    def __init__(self, inner) -> None:
        self.inner = inner
        self.with_session = ChannelsAuthMiddlewareStack(inner)
        self.cookie = settings.SESSION_COOKIE_NAME.encode("latin1") + b"="

    async def __call__(self, scope, receive, send):
        presented = find_tokens(scope)
        if presented:
            return await self.with_token(presented, scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"cookie" and self.cookie in value:
                return await self.with_session(scope, receive, send)
        return await self.inner({**scope, "user": AnonymousUser()}, receive, send)

    async def with_token(self, presented: list[str], scope, receive, send):
        """Serve the connection as the token's user, or refuse the handshake saying why."""
        try:
            if len(presented) > 1:
                raise tokens.InvalidToken("more than one token")
            user, expires_at = await database_sync_to_async(tokens.verify)(presented[0])
        except tokens.InvalidToken as error:
            return await refuse(scope, receive, send, error.reason)
        except DatabaseError:
            return await refuse(scope, receive, send, "not checked: the database is unavailable")
        scope = {
            **without_tokens(scope),
            "user": user,
            "token_expires_at": expires_at.timestamp(),
        }
        return await self.inner(scope, receive, send)


def find_tokens(scope: dict) -> list[str]:
    """Return every token the handshake presents: Bearer headers, then bearer.* subprotocol entries."""
    found = []
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin1").strip().partition(" ")
            # Another scheme (Basic, for a proxy in front) is not ours to judge.
            if scheme.lower() == BEARER_SCHEME:
                found.append(credentials.strip())
    for entry in scope.get("subprotocols", ()):
        if entry.startswith(BEARER_SUBPROTOCOL):
            found.append(entry.removeprefix(BEARER_SUBPROTOCOL))
    return found


def without_tokens(scope: dict) -> dict:
    """Return ``scope`` without the token anywhere: no Authorization header, no bearer.* subprotocol
    (so that no consumer selects or logs it)."""
    subprotocols = [
        entry for entry in scope.get("subprotocols", ()) if not entry.startswith(BEARER_SUBPROTOCOL)
    ]
    headers = []
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            continue
        if name == b"sec-websocket-protocol":
            entries = [entry.strip() for entry in value.decode("latin1").split(",")]
            kept = [entry for entry in entries if not entry.startswith(BEARER_SUBPROTOCOL)]
            if not kept:
                continue
            value = ", ".join(kept).encode("latin1")
        headers.append((name, value))
    return {**scope, "subprotocols": subprotocols, "headers": headers}


async def refuse(scope: dict, receive, send, why: str) -> None:
    """Refuse the handshake with 403 and a text body saying why; log it without the token."""
    host, port = scope.get("client") or ("-", "-")
    logger.warning(
        "handshake rejected peer=%s:%s path=%s: token refused: %s", host, port, scope.get("path"), why
    )
    message = await receive()
    if message["type"] == "websocket.connect":
        await send({"type": "websocket.close", "reason": f"Token refused: {why}."})
