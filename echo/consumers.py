"""WebSocket consumers: they move messages between a socket and echo.services, nothing more."""

import logging
import uuid

from channels.generic.websocket import AsyncWebsocketConsumer

from echo import services

logger = logging.getLogger(__name__)
# Per-message lines have their own logger, off by default: at thousands of messages a
# second they cost about a quarter of the echo throughput (bench/logging_cost.py).
messages_logger = logging.getLogger("echo.messages")

# The group every ws/ connection joins, and the message type that pushes to it.
BROADCAST_GROUP = "group.all"
BROADCAST_MESSAGE = "broadcast.message"


class LoggedConsumer(AsyncWebsocketConsumer):
    """A consumer that logs its connection's life, each line with a short id and the peer."""

    async def websocket_connect(self, message: dict) -> None:
        self.connection_id = uuid.uuid4().hex[:8]
        client = self.scope.get("client") or ("-", "-")
        self.peer = f"{client[0]}:{client[1]}"
        await super().websocket_connect(message)

    async def connect(self) -> None:
        """Accept the connection."""
        await self.accept()
        logger.info("conn=%s peer=%s connected path=%s", self.connection_id, self.peer, self.scope["path"])

    async def websocket_receive(self, message: dict) -> None:
        if messages_logger.isEnabledFor(logging.INFO):
            messages_logger.info(
                "conn=%s peer=%s received %s", self.connection_id, self.peer, describe(message)
            )
        await super().websocket_receive(message)

    async def send(self, text_data: str | None = None, bytes_data: bytes | None = None, close=False):
        """Send a text or binary message down the socket."""
        await super().send(text_data=text_data, bytes_data=bytes_data, close=close)
        if messages_logger.isEnabledFor(logging.INFO):
            sent = {"text": text_data, "bytes": bytes_data}
            messages_logger.info("conn=%s peer=%s sent %s", self.connection_id, self.peer, describe(sent))

    async def disconnect(self, code: int) -> None:
        """Log the end of the connection with the client's close code."""
        logger.info("conn=%s peer=%s closed code=%s", self.connection_id, self.peer, code)


class EchoConsumer(LoggedConsumer):
    """ws/: answer text with a greeting, echo binary as it came, relay broadcasts."""

    groups = (BROADCAST_GROUP,)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Answer one message from the client."""
        if text_data is not None:
            await self.send(text_data=services.echo_reply(text=text_data))
        else:
            await self.send(bytes_data=bytes_data)

    async def broadcast_message(self, event: dict) -> None:
        """Relay a broadcast from the channel layer to the client."""
        await self.send(text_data=services.broadcast_text(text=event["text"]))


class RawEchoConsumer(LoggedConsumer):
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


def describe(message: dict) -> str:
    """Say what kind of message this is and how big, never what it says."""
    if message.get("text") is not None:
        return f"text {len(message['text'])} chars"
    return f"binary {len(message.get('bytes') or b'')} bytes"
