"""WebSocket consumers: they move messages between a socket, the channel layer and echo.services."""

import asyncio
import contextlib
import logging
import math
import time
import uuid
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError

from echo import metrics, protocol, pushlog, services
from echo.presence import registry

logger = logging.getLogger(__name__)
# Per-message lines have their own logger, off by default: at thousands of messages a
# second they cost about a third of the echo throughput (bench/logging_cost.py).
messages_logger = logging.getLogger("echo.messages")

# How many groups one connection may be in, "all" included.
MAX_GROUPS = 20
POLICY_VIOLATION = 1008
ABNORMAL_CLOSURE = 1006  # what a client is told of a connection that ended without a close frame
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
INTERNAL_REASON = "internal server error"
TRY_AGAIN_LATER = 1013
# A connection made with a token (echo/auth.py) is closed with this when the token expires.
TOKEN_EXPIRED = 4001


class BaseConsumer(AsyncWebsocketConsumer):
    """What every consumer shares: log lines with a short id and the peer, metrics, the rate and
    size limits, one clean-up however the connection ends, dispatch without a thread hop."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.connection_id = uuid.uuid4().hex[:8]
        self.peer = "-"
        self.rate_limit = services.RateLimit(rate=settings.WEBSOCKET_RATE, burst=settings.WEBSOCKET_BURST)
        self.max_size: float = settings.WEBSOCKET_MAX_MESSAGE_SIZE or math.inf
        self.accepted = self.closing = self.disconnected = self.ended = False
        # The close at a token's expiry: a timer, then the task that closes (see expire_at).
        self.expiry: asyncio.TimerHandle | None = None
        self.expiry_task: asyncio.Task | None = None

    async def __call__(self, scope: dict, receive, send) -> None:
        """Serve one connection; whatever a handler raises is logged once, closes with 1011 and cleans up."""
        client = scope.get("client") or ("-", "-")
        self.peer = f"{client[0]}:{client[1]}"
        try:
            await super().__call__(scope, receive, send)
        except Exception:
            # Raised on, Daphne would log it again and skip disconnect(): the presence row, the
            # open-connections gauge and the group memberships would stay behind.
            logger.exception("conn=%s peer=%s failed: closing with 1011", self.connection_id, self.peer)
            await self.abort(send)
        except asyncio.CancelledError:
            # Daphne cancels an application that outlives its socket by application_close_timeout
            # (one stuck waiting on Redis or the database) and every application at shutdown. The
            # clean-up awaits nothing, so it completes here, before the cancellation goes on.
            logger.info("conn=%s peer=%s cancelled: cleaning up", self.connection_id, self.peer)
            await self.end(ABNORMAL_CLOSURE)
            raise

    async def abort(self, send) -> None:
        """Close with 1011 (accepting first: a close code needs an open socket), then clean up."""
        if not self.disconnected:
            with contextlib.suppress(Exception):  # a socket already gone: the clean-up is what matters
                if not self.accepted:
                    await send({"type": "websocket.accept"})
                await send({"type": "websocket.close", "code": INTERNAL_ERROR, "reason": INTERNAL_REASON})
        try:
            await self.end(INTERNAL_ERROR)
        except Exception:
            logger.exception("conn=%s peer=%s clean-up failed", self.connection_id, self.peer)

    async def dispatch(self, message: dict) -> None:
        """Call the handler for ``message``, on this event loop.

        Channels 4.3 first hops to a thread for close_old_connections(), about 30% of the CPU of
        an echo load; these handlers reach the database only through database_sync_to_async,
        which does that itself.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']!r}")
        await handler(message)

    async def websocket_disconnect(self, message: dict) -> None:
        """Clean up and stop; no thread hop (see dispatch)."""
        self.disconnected = True
        await self.end(message["code"])
        raise StopConsumer()

    async def end(self, code: int) -> None:
        """Run disconnect() once, however the connection ends: a close, or a failure."""
        if self.ended:
            return
        self.ended = True
        if self.expiry is not None:
            self.expiry.cancel()
        if self.expiry_task is not None:
            self.expiry_task.cancel()
        await self.disconnect(code)

    async def accept(self, subprotocol: str | None = None, headers=None) -> None:
        """Accept the connection, with ``subprotocol`` if given."""
        await super().accept(subprotocol, headers)
        self.accepted = True
        metrics.connections_open.inc()
        path, protocol_note = self.scope["path"], f" protocol={subprotocol}" if subprotocol else ""
        logger.info("conn=%s peer=%s connected path=%s%s", self.connection_id, self.peer, path, protocol_note)
        if (expires_at := self.scope.get("token_expires_at")) is not None:
            self.expire_at(expires_at)

    def expire_at(self, expires_at: float) -> None:
        """Close the connection with 4001 at ``expires_at`` (a UNIX time), its token's expiry."""
        loop = asyncio.get_running_loop()

        def start() -> None:
            self.expiry = None
            self.expiry_task = loop.create_task(self.expire())

        self.expiry = loop.call_later(max(0.0, expires_at - time.time()), start)

    async def expire(self) -> None:
        """Close the connection because its token expired (runs beside the consumer's own task)."""
        if self.closing or self.ended:
            return
        try:
            await self.close(TOKEN_EXPIRED, "token expired")
        except Exception:
            logger.exception("conn=%s peer=%s close at token expiry failed", self.connection_id, self.peer)

    async def websocket_receive(self, message: dict) -> None:
        if messages_logger.isEnabledFor(logging.INFO):
            messages_logger.info(
                "conn=%s peer=%s received %s", self.connection_id, self.peer, describe(message)
            )
        metrics.messages_received.inc()
        if self.closing:
            return  # frames that were on their way when we closed
        if not self.rate_limit.allow():
            limit = settings.WEBSOCKET_RATE
            await self.close(POLICY_VIOLATION, f"too many messages: at most {limit:g} a second")
            return
        await super().websocket_receive(message)

    async def send(self, text_data: str | None = None, bytes_data: bytes | None = None, close=False):
        """Send a text or binary message down the socket; one over the size limit closes it with 1009."""
        if self.closing:
            return  # the close frame is out: nothing may follow it
        # Every frame passes here, so none reaches autobahn, which raises for one over the limit.
        # Only a message over a quarter of the limit can be over it (UTF-8: 4 bytes a character).
        data = text_data if text_data is not None else bytes_data
        if (
            data is not None
            and len(data) * 4 > self.max_size
            and (size := protocol.oversize(data, self.max_size))
        ):
            reason = f"a message of {size} bytes to send is over the limit of {self.max_size} bytes"
            await self.close(MESSAGE_TOO_BIG, reason)
            return
        await super().send(text_data=text_data, bytes_data=bytes_data, close=close)
        metrics.messages_sent.inc()
        if messages_logger.isEnabledFor(logging.INFO):
            sent = {"text": text_data, "bytes": bytes_data}
            messages_logger.info("conn=%s peer=%s sent %s", self.connection_id, self.peer, describe(sent))

    async def close(self, code: int | None = None, reason: str | None = None) -> None:
        """Close the connection with ``code`` and ``reason``."""
        if code not in (None, 1000):
            conn, peer = self.connection_id, self.peer
            logger.info("conn=%s peer=%s closing code=%s reason=%s", conn, peer, code, reason)
        self.closing = True
        await super().close(code, reason)

    async def disconnect(self, code: int) -> None:
        """Count the connection out and log its end with the close code."""
        if self.accepted:
            metrics.connections_open.dec()
        logger.info("conn=%s peer=%s closed code=%s", self.connection_id, self.peer, code)


class EchoConsumer(BaseConsumer):
    """ws/: answer text with a greeting, echo binary, relay broadcasts; JSON with echo.json."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.uses_json = False
        self.names: list[str] = []  # the groups joined: what disconnect() leaves
        # A signed-in connection's user group ("user:<pk>"): joined on connect, left on
        # disconnect, never in ``names`` (it is no client's to leave, nor counted in MAX_GROUPS).
        self.own_group: str | None = None
        # The position of the last push this client has (or that it would not get live): pushes
        # at or before it are not sent again.
        self.position: int | None = None
        self.registered = False

    async def connect(self) -> None:
        """Join "all", the user's group and the groups named in the query string, count in, then accept."""
        self.uses_json = protocol.JSON_SUBPROTOCOL in self.scope.get("subprotocols", ())
        subprotocol = protocol.JSON_SUBPROTOCOL if self.uses_json else None
        query = parse_qs(self.scope.get("query_string", b"").decode("latin1"))
        try:
            names = [services.validate_group_name(name) for name in query.get("group", [])]
            after = services.parse_after(query.get("after"))
        except (services.InvalidGroupName, ValueError) as error:
            # A close code and reason can only be sent on an accepted connection.
            await self.accept(subprotocol)
            await self.close(POLICY_VIOLATION, str(error))
            return
        # Join before accepting, so that a push sent once the handshake is done reaches us; the
        # tail's position, read in the same step, divides what comes live from what came before.
        await pushlog.tail.ready()
        for name in [services.ALL_GROUP, *names][:MAX_GROUPS]:
            self.join(name)
        if (user := services.signed_in(self.scope.get("user"))) is not None:
            self.own_group = services.user_group(user)
            pushlog.tail.join(self.own_group, self.channel_name)
        self.position = pushlog.tail.position
        row = services.presence_row(
            scope=self.scope,
            channel=self.channel_name,
            peer=self.peer,
            groups=self.names,
            subprotocol=subprotocol,
        )
        registry.add(self.connection_id, row, self.send_online if self.uses_json else None)
        self.registered = True
        await self.accept(subprotocol)
        if self.uses_json:
            username = self.scope["user"].get_username() if row["user_id"] is not None else None
            fields = {"connection": self.connection_id, "user": username, "groups": self.names}
            await self.send(text_data=protocol.encode("welcome", **fields, last_broadcast=self.position))
        if after is not None:
            await self.replay(after)

    async def replay(self, after: int) -> None:
        """Send the pushes this client missed since position ``after``, before any live one."""
        live_from = self.position
        missed, truncated = await pushlog.read_after(after, upto=live_from, groups=self.delivered_groups())
        # Pushes up to ``after`` the client has; after ``live_from`` they come live.
        self.position = max(after, live_from or 0)
        replayed = 0
        for event in missed:
            replayed += await self.send_push(event)
        self.position = max(self.position, *(event["id"] for event in missed), 0)
        if self.uses_json:
            resumed = protocol.encode("resumed", after=after, replayed=replayed, truncated=truncated)
            await self.send(text_data=resumed)

    async def disconnect(self, code: int) -> None:
        """Leave the groups, count the connection out and log its end (awaiting nothing: it also
        runs when the consumer is cancelled)."""
        try:
            for name in self.delivered_groups():
                pushlog.tail.leave(name, self.channel_name)
        finally:
            if self.registered:
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
                reply = services.echo_reply(text=message.value)
                await self.send(text_data=protocol.encode_within(self.max_size, "echo", text=reply))
            elif message.type == "join":
                self.join(services.validate_group_name(message.value))
                await self.send(text_data=protocol.encode("joined", group=message.value, groups=self.names))
            elif message.type == "leave":
                self.leave(message.value)
                await self.send(text_data=protocol.encode("left", group=message.value, groups=self.names))
            else:
                await self.say(message.value, message.text)
        except (
            protocol.ProtocolError,
            services.InvalidGroupName,
            services.InvalidBroadcast,
            services.SayRefused,
        ) as error:
            await self.send(text_data=protocol.encode("error", error=str(error)))

    async def say(self, group: str, text: str) -> None:
        """Pass what the client said in a room to its members (the client included: that is its
        answer); nothing is sent back directly."""
        try:
            await database_sync_to_async(services.say)(
                group=group,
                text=text,
                user=self.scope.get("user"),
                connection_id=self.connection_id,
                groups=list(self.names),
            )
        except DatabaseError as error:
            conn, peer = self.connection_id, self.peer
            logger.warning("conn=%s peer=%s message not recorded: database error: %s", conn, peer, error)
            raise services.SayRefused("not sent: the database is unavailable just now; try again") from None

    def join(self, name: str) -> None:
        """Add this connection to the group ``name``: this process's tail delivers its pushes."""
        if name in self.names:
            return
        if len(self.names) >= MAX_GROUPS:
            raise services.InvalidGroupName(f"a connection may be in at most {MAX_GROUPS} groups")
        pushlog.tail.join(name, self.channel_name)
        self.names.append(name)
        registry.update(self.connection_id, groups=",".join(self.names))

    def leave(self, name: str) -> None:
        """Take this connection out of the group ``name``."""
        if name == services.ALL_GROUP:
            raise services.InvalidGroupName(f"every connection stays in {services.ALL_GROUP!r}")
        if name == self.own_group:
            raise services.InvalidGroupName(f"a signed-in connection stays in its user's group {name!r}")
        services.validate_group_name(name)
        if name not in self.names:
            return
        pushlog.tail.leave(name, self.channel_name)
        self.names.remove(name)
        registry.update(self.connection_id, groups=",".join(self.names))

    def delivered_groups(self) -> list[str]:
        """Return every group whose pushes this connection gets: those joined, and its user's."""
        return [*self.names, self.own_group] if self.own_group else self.names

    async def broadcast_message(self, event: dict) -> None:
        """Relay a live push to the client, unless it has it already (a replay sent it)."""
        if self.position is not None and event["id"] <= self.position:
            return
        self.position = event["id"]
        await self.send_push(event)

    async def send_push(self, event: dict) -> bool:
        """Send one push to the client; say whether it was sent."""
        try:
            frame = services.broadcast_frame(event=event, as_json=self.uses_json, limit=self.max_size)
        except services.InvalidBroadcast as error:
            # Stored before broadcast_send checked sizes, or sent with a larger limit: skipped,
            # since closing would only bring the client back to the same replay.
            conn, peer = self.connection_id, self.peer
            logger.warning("conn=%s peer=%s broadcast=%s not sent: %s", conn, peer, event.get("id"), error)
            return False
        await self.send(text_data=frame)
        return True

    async def connection_close(self, event: dict) -> None:
        """Close the connection because the server was asked to (an administrator's disconnect)."""
        await self.close(event["code"], event["reason"])

    async def channel_overflow(self, event: dict) -> None:
        """Close a connection whose channel-layer queue overflowed; the client resumes what it missed."""
        await self.close(TRY_AGAIN_LATER, "fell behind: reconnect to get the missed broadcasts")

    async def send_online(self, online: int) -> None:
        """Tell a JSON client how many connections are online."""
        try:
            await self.send(text_data=protocol.encode("presence", online=online))
        except Exception:  # called from the presence task: a failure here must not stop it
            logger.exception("conn=%s peer=%s presence count not sent", self.connection_id, self.peer)


class RawEchoConsumer(BaseConsumer):
    """ws/raw/: send back exactly what came, text or binary, the empty message included."""

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Echo one message unchanged."""
        await self.send(text_data=text_data, bytes_data=bytes_data)


class NoRouteConsumer(AsyncWebsocketConsumer):
    """Turn away a handshake for a path that has no WebSocket route, with a log line."""

    async def connect(self) -> None:
        """Reject the handshake."""
        host, port = self.scope.get("client") or ("-", "-")
        path = self.scope["path"]
        logger.warning("handshake rejected peer=%s:%s: no WebSocket route for path %r", host, port, path)
        await self.close(reason=f"No WebSocket route for {path[:100]}: this server has /ws/ and /ws/raw/.")


def describe(message: dict) -> str:
    """Say what kind of message this is and how big, never what it says."""
    if message.get("text") is not None:
        return f"text {len(message['text'])} chars"
    return f"binary {len(message.get('bytes') or b'')} bytes"
