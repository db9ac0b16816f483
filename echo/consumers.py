"""WebSocket consumers: they move messages between a socket, the channel layer and echo.services."""

import logging
import uuid
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.utils import timezone

from echo import metrics, protocol, services
from echo.presence import registry

logger = logging.getLogger(__name__)
# Per-message lines have their own logger, off by default: at thousands of messages a
# second they cost about a third of the echo throughput (bench/logging_cost.py).
messages_logger = logging.getLogger("echo.messages")

# How many groups one connection may be in, "all" included.
MAX_GROUPS = 20
POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013


class BaseConsumer(AsyncWebsocketConsumer):
    """What every consumer here shares: connection log lines (a short id and the peer), metrics,
    the message rate limit, and dispatch without Channels' per-message thread hop."""

    async def dispatch(self, message: dict) -> None:
        """Call the handler for ``message``, on this event loop.

        Channels 4.3 first hops to a thread to run Django's close_old_connections() before
        every handler (and on disconnect), about 30% of the CPU of an echo load. These
        handlers reach the database only through database_sync_to_async, which does that
        itself, in its thread.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']!r}")
        await handler(message)

    async def websocket_disconnect(self, message: dict) -> None:
        """Run disconnect() and stop; no thread hop (see dispatch)."""
        await self.disconnect(message["code"])
        raise StopConsumer()

    async def websocket_connect(self, message: dict) -> None:
        self.connection_id = uuid.uuid4().hex[:8]
        client = self.scope.get("client") or ("-", "-")
        self.peer = f"{client[0]}:{client[1]}"
        self.rate_limit = services.RateLimit(rate=settings.WEBSOCKET_RATE, burst=settings.WEBSOCKET_BURST)
        self.closing = False
        self.counted = False
        await super().websocket_connect(message)

    async def accept(self, subprotocol: str | None = None, headers=None) -> None:
        """Accept the connection, with ``subprotocol`` if given."""
        await super().accept(subprotocol, headers)
        metrics.connections_open.inc()
        self.counted = True
        logger.info(
            "conn=%s peer=%s connected path=%s%s",
            self.connection_id,
            self.peer,
            self.scope["path"],
            f" protocol={subprotocol}" if subprotocol else "",
        )

    async def websocket_receive(self, message: dict) -> None:
        if messages_logger.isEnabledFor(logging.INFO):
            messages_logger.info(
                "conn=%s peer=%s received %s", self.connection_id, self.peer, describe(message)
            )
        metrics.messages_received.inc()
        if self.closing:
            return  # frames that were on their way when we closed
        if not self.rate_limit.allow():
            await self.close(
                POLICY_VIOLATION, f"too many messages: at most {settings.WEBSOCKET_RATE:g} a second"
            )
            return
        await super().websocket_receive(message)

    async def send(self, text_data: str | None = None, bytes_data: bytes | None = None, close=False):
        """Send a text or binary message down the socket."""
        await super().send(text_data=text_data, bytes_data=bytes_data, close=close)
        metrics.messages_sent.inc()
        if messages_logger.isEnabledFor(logging.INFO):
            sent = {"text": text_data, "bytes": bytes_data}
            messages_logger.info("conn=%s peer=%s sent %s", self.connection_id, self.peer, describe(sent))

    async def close(self, code: int | None = None, reason: str | None = None) -> None:
        """Close the connection with ``code`` and ``reason``."""
        if code not in (None, 1000):
            logger.info(
                "conn=%s peer=%s closing code=%s reason=%s", self.connection_id, self.peer, code, reason
            )
        await super().close(code, reason)

    async def disconnect(self, code: int) -> None:
        """Log the end of the connection with the client's close code."""
        if self.counted:
            metrics.connections_open.dec()
        logger.info("conn=%s peer=%s closed code=%s", self.connection_id, self.peer, code)


class EchoConsumer(BaseConsumer):
    """ws/: answer text with a greeting, echo binary, relay broadcasts; JSON with echo.json."""

    async def connect(self) -> None:
        """Join "all" and the groups named in the query string, count in, then accept."""
        self.uses_json = protocol.JSON_SUBPROTOCOL in self.scope.get("subprotocols", ())
        subprotocol = protocol.JSON_SUBPROTOCOL if self.uses_json else None
        self.names: list[str] = []
        self.replayed: set[int] = set()
        query = parse_qs(self.scope.get("query_string", b"").decode("latin1"))
        try:
            names = [services.validate_group_name(name) for name in query.get("group", [])]
            after = parse_after(query.get("after"))
        except (services.InvalidGroupName, ValueError) as error:
            # A close code and reason can only be sent on an accepted connection.
            await self.accept(subprotocol)
            await self.close(POLICY_VIOLATION, str(error))
            return
        # Join before accepting, so that a broadcast sent once the handshake is done reaches us.
        for name in [services.ALL_GROUP, *names][:MAX_GROUPS]:
            await self.join(name)
        user = self.scope.get("user")
        row = {
            "channel_name": self.channel_name,
            "path": self.scope["path"],
            "groups": ",".join(self.names),
            "user_id": user.pk if user is not None and user.is_authenticated else None,
            "peer": self.peer,
            "user_agent": header(self.scope, b"user-agent")[:300],
            "protocol": subprotocol or "",
            "connected_at": timezone.now(),
        }
        registry.add(self.connection_id, row, self.send_online if self.uses_json else None)
        await self.accept(subprotocol)
        if self.uses_json:
            username = user.get_username() if row["user_id"] is not None else None
            last = await database_sync_to_async(services.latest_broadcast_id)()
            welcome = protocol.encode(
                "welcome",
                connection=self.connection_id,
                user=username,
                groups=self.names,
                last_broadcast=last,
            )
            await self.send(text_data=welcome)
        if after is not None:
            await self.replay(after)

    async def replay(self, after: int) -> None:
        """Send the broadcasts this client missed since ``after``, before any live one."""
        missed, truncated = await database_sync_to_async(services.missed_broadcasts)(
            after=after, groups=self.names
        )
        for broadcast in missed:
            self.replayed.add(broadcast.pk)
            await self.broadcast_message(services.broadcast_event(broadcast), replay=True)
        if self.uses_json:
            resumed = protocol.encode("resumed", after=after, replayed=len(missed), truncated=truncated)
            await self.send(text_data=resumed)

    async def disconnect(self, code: int) -> None:
        """Leave the groups, count the connection out and log its end."""
        for name in self.names:
            await self.channel_layer.group_discard(services.layer_group(name), self.channel_name)
        registry.remove(self.connection_id)
        await super().disconnect(code)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Answer one message from the client."""
        if text_data is None:
            await self.send(bytes_data=bytes_data)
        elif not self.uses_json:
            await self.send(text_data=services.echo_reply(text=text_data))
        else:
            await self.receive_envelope(text_data)

    async def receive_envelope(self, text: str) -> None:
        """Act on one echo.json message; a bad one gets an error envelope, not a close."""
        try:
            message = protocol.parse(text)
            if message.type == "echo":
                await self.send(
                    text_data=protocol.encode("echo", text=services.echo_reply(text=message.value))
                )
            elif message.type == "join":
                await self.join(services.validate_group_name(message.value))
                await self.send(text_data=protocol.encode("joined", group=message.value, groups=self.names))
            else:
                await self.leave(services.validate_group_name(message.value))
                await self.send(text_data=protocol.encode("left", group=message.value, groups=self.names))
        except (protocol.ProtocolError, services.InvalidGroupName) as error:
            await self.send(text_data=protocol.encode("error", error=str(error)))

    async def join(self, name: str) -> None:
        """Add this connection to the group ``name``."""
        if name in self.names:
            return
        if len(self.names) >= MAX_GROUPS:
            raise services.InvalidGroupName(f"a connection may be in at most {MAX_GROUPS} groups")
        await self.channel_layer.group_add(services.layer_group(name), self.channel_name)
        self.names.append(name)
        registry.update(self.connection_id, groups=",".join(self.names))

    async def leave(self, name: str) -> None:
        """Take this connection out of the group ``name``."""
        if name == services.ALL_GROUP:
            raise services.InvalidGroupName(f"every connection stays in {services.ALL_GROUP!r}")
        if name not in self.names:
            return
        await self.channel_layer.group_discard(services.layer_group(name), self.channel_name)
        self.names.remove(name)
        registry.update(self.connection_id, groups=",".join(self.names))

    async def broadcast_message(self, event: dict, replay: bool = False) -> None:
        """Relay a broadcast from the channel layer to the client, unless the replay already did."""
        if not replay and event.get("id") in self.replayed:
            return
        if self.uses_json:
            await self.send(text_data=protocol.broadcast_envelope(event))
        else:
            await self.send(text_data=services.broadcast_text(text=event["text"]))

    async def connection_close(self, event: dict) -> None:
        """Close the connection because the server was asked to (an administrator's disconnect)."""
        await self.close(event["code"], event["reason"])

    async def channel_overflow(self, event: dict) -> None:
        """Close a connection whose channel-layer queue overflowed; the client resumes what it missed."""
        await self.close(TRY_AGAIN_LATER, "fell behind: reconnect to get the missed broadcasts")

    async def send_online(self, online: int) -> None:
        """Tell a JSON client how many connections are online."""
        await self.send(text_data=protocol.encode("presence", online=online))


class RawEchoConsumer(BaseConsumer):
    """ws/raw/: send back exactly what came, text or binary, the empty message included."""

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Echo one message unchanged."""
        await self.send(text_data=text_data, bytes_data=bytes_data)


class NoRouteConsumer(AsyncWebsocketConsumer):
    """Turn away a handshake for a path that has no WebSocket route, with a log line."""

    async def connect(self) -> None:
        """Reject the handshake."""
        client = self.scope.get("client") or ("-", "-")
        logger.warning(
            "handshake rejected peer=%s:%s: no WebSocket route for path %r",
            client[0],
            client[1],
            self.scope["path"],
        )
        await self.close()


def parse_after(values: list[str] | None) -> int | None:
    """Read the ``after`` query parameter: the id of the last broadcast the client has."""
    if not values:
        return None
    if not values[-1].isdigit():
        raise ValueError(f"invalid after {values[-1]!r}: expected the id of a broadcast")
    return int(values[-1])


def header(scope: dict, name: bytes) -> str:
    """Return the value of the request header ``name``, or an empty string."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin1")
    return ""


def describe(message: dict) -> str:
    """Say what kind of message this is and how big, never what it says."""
    if message.get("text") is not None:
        return f"text {len(message['text'])} chars"
    return f"binary {len(message.get('bytes') or b'')} bytes"
