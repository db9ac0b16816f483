"""Corrections to Daphne's WebSocket handling, applied once from project.asgi.

Each belongs upstream; until then it lives here, guarded by the Daphne version it was
written for (tests/test_daphne_fixes.py fails if Daphne changes underneath):

- an empty text or binary message is sent: Daphne tests the payload's truthiness and
  silently drops ``""`` and ``b""``;
- a handshake the application refuses with a reason gets that reason as the 403's text body
  (Daphne sent an empty 403: an unknown path was a mystery to the client);
- an application's close frame carries its reason, and any code a server may send
  (1001, 1008, 1011, ...): Daphne drops the reason and autobahn's ``sendClose`` raises
  for every code but 1000 and 3000-4999;
- the client's close code and reason are echoed in the server's close frame (autobahn
  answers 1000 unless told otherwise);
- ``settings.WEBSOCKET_MAX_MESSAGE_SIZE`` is the size limit, and a message over it, invalid
  UTF-8 or a protocol violation get a close frame (1009, 1007, 1002) before the TCP
  connection ends, instead of a bare disconnect;
- a close frame the server queued is never thrown away: autobahn aborts the TCP connection
  (discarding what is still unsent) as soon as the peer's close arrives, so a violation
  followed by a close in one write, a forbidden close code, a bad close reason or a 1-byte
  close payload got a TCP reset instead of their 1002 or 1007. The connection now ends once
  what is queued has gone out, or after ``CLOSE_HANDSHAKE_TIMEOUT`` seconds at most;
- a WebSocket upgrade must come over HTTP/1.1 (RFC 6455 4.2.1): Daphne rewrote an HTTP/1.0
  request line to 1.1 and upgraded it; it now gets 400;
- a client gets at least a second to answer the server's close frame: autobahn's 1-second
  close-handshake timeout runs on txaio's batched timer, which rounds deadlines down to a
  whole second, so the wait was anywhere from 0 to 1 s and a prompt client could be cut off
  (its consumer told 1006, not the close code);
- a send that races the closing handshake is dropped, not raised into the application
  (autobahn raises ``Disconnected``; Daphne logged a traceback and killed the consumer);
- the resource limits of project.daphne_limits (outbound bytes, header deadline, connection
  caps), installed with these and only on the same Daphne;
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
from daphne.http_protocol import WebRequest
from daphne.server import Server
from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol
from django.conf import settings
from twisted.internet import defer, reactor

from project import daphne_limits
from project.daphne_limits import unsent_bytes

logger = logging.getLogger(__name__)

WRITTEN_FOR = "4.2.3"
# Seconds that clients and applications get to finish their closing handshake on shutdown.
SHUTDOWN_GRACE = 5.0
GOING_AWAY = 1001
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
            self.denial_text = message.get("reason") or None  # the 403's body
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


def send_http_error_response(original: Callable[..., None]) -> Callable[..., None]:
    """Wrap autobahn's refusal of a handshake so that it carries a text body when the application
    gave a reason with its close (ASGI's only way to say why; Daphne has no denial responses)."""

    def send(protocol: WebSocketProtocol, code: int, reason: str, response_headers=None) -> None:
        text = getattr(protocol, "denial_text", None)
        if not text:
            original(protocol, code, reason, response_headers)
            return
        body = (" ".join(text.splitlines())[:500] + "\n").encode()
        head = f"HTTP/1.1 {code} {reason}\r\n"
        for name, value in response_headers or ():
            head += f"{name}: {value}\r\n"
        head += f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n\r\n"
        protocol.sendData(head.encode() + body)

    return send


def close_with(protocol: WebSocketProtocol, code: int | None, reason: str | None) -> None:
    """Send a close frame with ``code`` (1000 when absent) and ``reason``."""
    code = 1000 if code is None else code
    if code not in AutobahnProtocol.CLOSE_STATUS_CODES_ALLOWED and not 3000 <= code <= 4999:
        logger.warning("application closed with unsendable code %s; sending 1011", code)
        code, reason = 1011, "internal error"
    reason_bytes = encode_truncate(reason, 123) if reason else None
    protocol.sendCloseFrame(code=code, reasonUtf8=reason_bytes, isReply=False)


def drop_closing_sends(original: Callable[..., None]) -> Callable[..., None]:
    """Wrap ``serverSend`` so that a send racing the closing handshake is dropped, not raised."""

    def server_send(protocol: WebSocketProtocol, content, binary: bool = False) -> None:
        if protocol.state in (protocol.STATE_CLOSING, protocol.STATE_CLOSED):
            # The closing handshake has begun: the frame cannot go out. autobahn raises, which
            # Daphne turns into "Exception inside application" and kills the consumer before
            # its disconnect handler runs.
            logger.debug("dropping a send to %s: the connection is closing", protocol.client_addr)
            return
        original(protocol, content, binary)

    return server_send


def flushing_close(original: Callable[..., None]) -> Callable[..., None]:
    """Wrap autobahn's ``_closeConnection`` so that an abort first lets queued frames go out."""

    def close_connection(protocol: WebSocketProtocol, abort: bool = False) -> None:
        if abort and unsent_bytes(protocol):
            transport = protocol.transport
            transport.loseConnection()  # writes what is queued (our close frame), then closes
            # A peer that does not read must not hold the connection: abort after a bound.
            reactor.callLater(CLOSE_HANDSHAKE_TIMEOUT, abort_if_open, transport)
            return
        original(protocol, abort)

    return close_connection


def abort_if_open(transport) -> None:
    if getattr(transport, "connected", False) and hasattr(transport, "abortConnection"):
        transport.abortConnection()


def http11_upgrades_only(original: Callable[..., object]) -> Callable[..., object]:
    """Wrap Daphne's ``WebRequest.process`` to answer 400 to a WebSocket upgrade over HTTP/1.0."""

    def process(request: WebRequest):
        upgrade = request.requestHeaders.getRawHeaders(b"upgrade") or [b""]
        if upgrade[0].lower() == b"websocket" and request.clientproto != b"HTTP/1.1":
            peer = request.transport.getPeer() if request.transport else "-"
            logger.warning("refused a WebSocket upgrade over %s from %s", request.clientproto.decode(), peer)
            request.basic_error(400, b"Bad Request", "A WebSocket upgrade requires HTTP/1.1.")
            return None
        return original(request)

    return process


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
    refusal = WebSocketProtocol.sendHttpErrorResponse
    WebSocketProtocol.sendHttpErrorResponse = send_http_error_response(refusal)
    WebSocketProtocol.serverSend = drop_closing_sends(WebSocketProtocol.serverSend)
    WebSocketProtocol._closeConnection = flushing_close(WebSocketProtocol._closeConnection)
    WebRequest.process = http11_upgrades_only(WebRequest.process)
    original_set_options = WebSocketFactory.setProtocolOptions

    def set_protocol_options(factory: WebSocketFactory, **options) -> None:
        # Daphne's Server.run sets its own limits after building the factory; ours win.
        original_set_options(factory, **{**options, **protocol_options()})

    WebSocketFactory.setProtocolOptions = set_protocol_options
    daphne_limits.apply(close=close_with, on_slow_client=on_slow_client)
    Server.kill_all_applications = graceful_shutdown(Server.kill_all_applications, list(on_shutdown))
    _applied = True
