"""Corrections to Daphne's WebSocket handling, applied once from project.asgi.

Each belongs upstream; until then it lives here, guarded by the Daphne version it was
written for (tests/test_daphne_fixes.py fails if Daphne changes underneath):

- an empty text or binary message is sent: Daphne tests the payload's truthiness and
  silently drops ``""`` and ``b""``;
- an application's close frame carries its reason, and any code a server may send
  (1001, 1008, 1011, ...): Daphne drops the reason and autobahn's ``sendClose`` raises
  for every code but 1000 and 3000-4999;
- the client's close code and reason are echoed in the server's close frame (autobahn
  answers 1000 unless told otherwise);
- ``settings.WEBSOCKET_MAX_MESSAGE_SIZE`` is the size limit, and a message over it, invalid
  UTF-8 or a protocol violation get a close frame (1009, 1007, 1002) before the TCP
  connection ends, instead of a bare disconnect;
- a client gets at least a second to answer the server's close frame: autobahn's 1-second
  close-handshake timeout runs on txaio's batched timer, which rounds deadlines down to a
  whole second, so the wait was anywhere from 0 to 1 s and a prompt client could be cut off
  (its consumer told 1006, not the close code);
- a send that races the closing handshake is dropped, not raised into the application
  (autobahn raises ``Disconnected``; Daphne logged a traceback and killed the consumer);
- a client that stops reading cannot make the server buffer without bound: once more than
  ``settings.WEBSOCKET_OUTBOUND_LIMIT`` bytes wait unsent, the next send closes it with
  1013 instead (Daphne buffered everything: 1 GB for 100 such clients);
- a request's headers (a WebSocket handshake is one) must arrive within
  ``settings.HTTP_HEADER_TIMEOUT`` seconds: Twisted resets its idle timer on every byte, so a
  client trickling one byte at a time (slowloris) held a connection for ever;
- on SIGTERM (or Ctrl-C) every open WebSocket gets a close frame 1001, each application
  sees its disconnect (up to ``SHUTDOWN_GRACE`` seconds), and the shutdown hooks run, where
  Daphne would cancel the applications and drop the TCP connections (clients saw 1006).
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable

import daphne
from autobahn.util import encode_truncate
from autobahn.websocket.protocol import WebSocketProtocol as AutobahnProtocol
from daphne.server import Server
from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol
from django.conf import settings
from twisted.internet import defer, reactor
from twisted.web.http import HTTPChannel

logger = logging.getLogger(__name__)

WRITTEN_FOR = "4.2.3"
# Seconds that clients and applications get to finish their closing handshake on shutdown.
SHUTDOWN_GRACE = 5.0
GOING_AWAY = 1001
TRY_AGAIN_LATER = 1013
# Seconds autobahn waits for the answer to a close frame; its timer rounds down to a whole
# second, so the real wait is between this minus one and this.
CLOSE_HANDSHAKE_TIMEOUT = 2

_applied = False


def handle_reply(self: WebSocketProtocol, message: dict) -> None:
    """Act on one ASGI message from the application (Daphne's own, with the fixes above)."""
    message_type = message.get("type")
    if message_type == "websocket.accept":
        self.serverAccept(message.get("subprotocol"))
    elif message_type == "websocket.close":
        if self.state == self.STATE_CONNECTING:
            self.serverReject()
        else:
            close_with(self, message.get("code"), message.get("reason"))
    elif message_type == "websocket.send":
        if self.state == self.STATE_CONNECTING:
            raise ValueError("Socket has not been accepted, so cannot send over it")
        text, data = message.get("text"), message.get("bytes")
        if (text is None) == (data is None):
            raise ValueError(
                f"Expected exactly one of 'text' or 'bytes' in websocket.send, got {sorted(message)}"
            )
        if data is not None:
            self.serverSend(data, True)
        else:
            self.serverSend(text, False)
    else:
        raise ValueError(f"Expected a websocket.* message type, got {message_type!r}")


def close_with(protocol: WebSocketProtocol, code: int | None, reason: str | None) -> None:
    """Send a close frame with ``code`` (1000 when absent) and ``reason``."""
    code = 1000 if code is None else code
    if code not in AutobahnProtocol.CLOSE_STATUS_CODES_ALLOWED and not 3000 <= code <= 4999:
        logger.warning("application closed with unsendable code %s; sending 1011", code)
        code, reason = 1011, "internal error"
    reason_bytes = encode_truncate(reason, 123) if reason else None
    protocol.sendCloseFrame(code=code, reasonUtf8=reason_bytes, isReply=False)


def unsent_bytes(protocol: WebSocketProtocol) -> int:
    """Return how many bytes the connection's Twisted transport holds that the peer has not taken."""
    transport = protocol.transport
    buffered = len(getattr(transport, "dataBuffer", b"")) - getattr(transport, "offset", 0)
    return buffered + getattr(transport, "_tempDataLen", 0)


def guarded_send(
    original: Callable[..., None], on_slow_client: Callable[[], None] | None
) -> Callable[..., None]:
    """Wrap ``serverSend`` so that a client which stopped reading is closed, not buffered for."""

    def server_send(protocol: WebSocketProtocol, content, binary: bool = False) -> None:
        if protocol.state in (protocol.STATE_CLOSING, protocol.STATE_CLOSED):
            # The closing handshake has begun: the frame cannot go out. autobahn raises, which
            # Daphne turns into "Exception inside application" and kills the consumer before
            # its disconnect handler runs.
            logger.debug("dropping a send to %s: the connection is closing", protocol.client_addr)
            return
        limit = settings.WEBSOCKET_OUTBOUND_LIMIT
        unsent = unsent_bytes(protocol) if limit else 0
        if unsent > limit and protocol.state == protocol.STATE_OPEN:
            logger.warning(
                "closing %s with 1013: %d bytes unsent, over WEBSOCKET_OUTBOUND_LIMIT=%d; it stopped reading",
                protocol.client_addr,
                unsent,
                limit,
            )
            # The close frame queues behind the unsent data; without a reply within autobahn's
            # close handshake timeout the connection is dropped and its buffer freed.
            close_with(protocol, TRY_AGAIN_LATER, "not reading: too much unsent data, reconnect to catch up")
            if on_slow_client is not None:
                on_slow_client()
            return
        original(protocol, content, binary)

    return server_send


def arm_header_deadline(channel: HTTPChannel) -> None:
    """Give the next request on ``channel`` HTTP_HEADER_TIMEOUT seconds to send all its headers."""
    disarm_header_deadline(channel)
    channel.header_deadline = reactor.callLater(settings.HTTP_HEADER_TIMEOUT, drop_slow_request, channel)


def disarm_header_deadline(channel: HTTPChannel) -> None:
    deadline = getattr(channel, "header_deadline", None)
    if deadline is not None and deadline.active():
        deadline.cancel()
    channel.header_deadline = None


def drop_slow_request(channel: HTTPChannel) -> None:
    channel.header_deadline = None
    if channel.transport is None:
        return
    logger.warning(
        "dropping %s: request headers incomplete after %s s (HTTP_HEADER_TIMEOUT)",
        channel.transport.getPeer(),
        settings.HTTP_HEADER_TIMEOUT,
    )
    channel.transport.abortConnection()


def header_deadlines() -> None:
    """Arm the header deadline when a connection opens and after each response; disarm it when
    the headers are in (a WebSocket upgrade never finishes its request, so it is never re-armed)."""
    original_made, original_headers = HTTPChannel.connectionMade, HTTPChannel.allHeadersReceived
    original_done, original_lost = HTTPChannel.requestDone, HTTPChannel.connectionLost

    def connection_made(channel: HTTPChannel) -> None:
        original_made(channel)
        arm_header_deadline(channel)

    def all_headers_received(channel: HTTPChannel) -> None:
        disarm_header_deadline(channel)
        original_headers(channel)

    def request_done(channel: HTTPChannel, request) -> None:
        # Armed first: a pipelined request buffered in the channel is read within original_done.
        arm_header_deadline(channel)
        original_done(channel, request)

    def connection_lost(channel: HTTPChannel, reason) -> None:
        disarm_header_deadline(channel)
        original_lost(channel, reason)

    HTTPChannel.connectionMade = connection_made
    HTTPChannel.allHeadersReceived = all_headers_received
    HTTPChannel.requestDone = request_done
    HTTPChannel.connectionLost = connection_lost


def protocol_options() -> dict:
    """Autobahn options that every WebSocket connection gets."""
    limit = settings.WEBSOCKET_MAX_MESSAGE_SIZE
    return {
        "echoCloseCodeReason": True,
        "failByDrop": False,
        "closeHandshakeTimeout": CLOSE_HANDSHAKE_TIMEOUT,
        "maxMessagePayloadSize": limit,
        "maxFramePayloadSize": limit,
    }


def graceful_shutdown(
    original: Callable[[Server], defer.Deferred], hooks: list[Callable[[], Awaitable[None]]]
) -> Callable[[Server], defer.Deferred]:
    """Wrap Daphne's ``kill_all_applications`` (its before-shutdown step) to close sockets first."""

    def kill_all_applications(server: Server) -> defer.Deferred:
        closing = []
        for protocol, details in list(server.connections.items()):
            if isinstance(protocol, WebSocketProtocol) and protocol.state == protocol.STATE_OPEN:
                close_with(protocol, GOING_AWAY, "server shutting down")
                if "application_instance" in details:
                    closing.append(details["application_instance"])
        logger.info("shutting down: closing %d WebSocket connection(s) with 1001", len(closing))

        async def finish() -> None:
            if closing:
                await asyncio.wait(closing, timeout=SHUTDOWN_GRACE)
            for hook in hooks:
                try:
                    await hook()
                except Exception:
                    logger.exception("shutdown hook %r failed", hook)

        done = defer.Deferred.fromFuture(asyncio.ensure_future(finish()))
        done.addBoth(lambda _: original(server))
        return done

    return kill_all_applications


def apply(
    *, on_shutdown: list[Callable[[], Awaitable[None]]] = (), on_slow_client: Callable[[], None] | None = None
) -> None:
    """Install the corrections into Daphne, once, if it is the version they were written for.

    ``on_shutdown`` coroutines run once the WebSockets are closed, before the process exits;
    ``on_slow_client`` is called for each connection closed because it stopped reading.
    """
    global _applied
    if _applied:
        return
    if daphne.__version__ != WRITTEN_FOR:
        logger.warning(
            "project.daphne_fixes was written for Daphne %s, found %s: not applied; "
            "check whether the fixes are still needed",
            WRITTEN_FOR,
            daphne.__version__,
        )
        return
    WebSocketProtocol.handle_reply = handle_reply
    WebSocketProtocol.serverSend = guarded_send(WebSocketProtocol.serverSend, on_slow_client)
    original_set_options = WebSocketFactory.setProtocolOptions

    def set_protocol_options(factory: WebSocketFactory, **options) -> None:
        # Daphne's Server.run sets its own limits after building the factory; ours win.
        original_set_options(factory, **{**options, **protocol_options()})

    WebSocketFactory.setProtocolOptions = set_protocol_options
    header_deadlines()
    Server.kill_all_applications = graceful_shutdown(Server.kill_all_applications, list(on_shutdown))
    _applied = True
