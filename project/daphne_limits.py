"""Resource limits Daphne lacks, applied once from project.asgi, so that no client can take the
server's memory or descriptors. Written for the Daphne of project.daphne_fixes (``WRITTEN_FOR``)
and installed only on it:

- **outbound bytes**: every byte queued for a peer counts, the server's own pongs and close
  frames included. Once more than ``WEBSOCKET_OUTBOUND_LIMIT`` bytes wait unsent, what comes
  next is not queued: the peer is sent 1013, counted and logged. Daphne buffered without bound
  (1 GB for 100 clients that stopped reading; 800 MB for one that sent pings and never read).
- **request headers** (a WebSocket handshake is one) must arrive within ``HTTP_HEADER_TIMEOUT``
  seconds: Twisted resets its idle timer on every byte, so a client trickling one byte at a
  time (slowloris) held a connection for ever.
- **concurrent WebSockets**, per client address (``WEBSOCKET_MAX_PER_ADDRESS``) and per process
  (``WEBSOCKET_MAX_CONNECTIONS``, by default below the descriptor limit, which is raised from
  its soft value to the hard one at start): past either, the handshake gets 503 and a WARNING,
  at most one a second. One address could otherwise take every descriptor, after which new
  clients got no answer and nothing was logged.
"""

import logging
import resource
import time
from collections import Counter
from collections.abc import Callable

from autobahn.twisted.websocket import ConnectionDeny
from daphne.utils import parse_x_forwarded_for
from daphne.ws_protocol import WebSocketProtocol
from django.conf import settings
from twisted.internet import reactor
from twisted.web.http import HTTPChannel

logger = logging.getLogger(__name__)

TRY_AGAIN_LATER = 1013
SERVICE_UNAVAILABLE = 503
# Descriptors kept free of WebSockets by the default process cap: for Redis, the database,
# plain HTTP requests and handshakes under way.
RESERVED_DESCRIPTORS = 256
# At most one WARNING about refused handshakes per this many seconds (and a count of the rest).
REFUSAL_LOG_INTERVAL = 1.0


def unsent_bytes(protocol: WebSocketProtocol) -> int:
    """Return how many bytes the connection's TCP transport holds that the peer has not taken."""
    transport = protocol.transport
    # Under TLS the protocol writes to a TLS wrapper, whose own transport is the TCP one.
    while transport is not None and not hasattr(transport, "dataBuffer") and hasattr(transport, "transport"):
        transport = transport.transport
    buffered = len(getattr(transport, "dataBuffer", b"")) - getattr(transport, "offset", 0)
    return buffered + getattr(transport, "_tempDataLen", 0)


def guarded_send_data(
    original: Callable[..., None], close: Callable[..., None], on_slow_client: Callable[[], None] | None
) -> Callable[..., None]:
    """Wrap autobahn's ``sendData``, through which every frame goes, with the outbound limit."""

    def send_data(protocol: WebSocketProtocol, data: bytes, sync: bool = False, chopsize=None) -> None:
        over = getattr(protocol, "outbound_state", None)
        if over == "over":
            return  # past the limit only the close frame went out
        limit = settings.WEBSOCKET_OUTBOUND_LIMIT
        if over is None and limit and protocol.state == protocol.STATE_OPEN:
            unsent = unsent_bytes(protocol)
            if unsent > limit:
                logger.warning(
                    "closing %s with 1013: %d bytes unsent, over WEBSOCKET_OUTBOUND_LIMIT=%d; "
                    "it stopped reading",
                    protocol.client_addr,
                    unsent,
                    limit,
                )
                # The close frame queues behind the unsent data; without an answer within the
                # close handshake timeout the connection is dropped and its buffer freed.
                protocol.outbound_state = "closing"  # lets the close frame through
                close(protocol, TRY_AGAIN_LATER, "not reading: too much unsent data, reconnect to catch up")
                protocol.outbound_state = "over"
                if on_slow_client is not None:
                    on_slow_client()
                return
        original(protocol, data, sync, chopsize)

    return send_data


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
    if not getattr(channel, "_buffer", None) and getattr(channel, "_HTTPChannel__first_line", 0):
        # Not a byte of a new request: a keep-alive connection left idle, closed without a fuss.
        logger.debug("closing idle keep-alive connection %s", channel.transport.getPeer())
        channel.transport.loseConnection()
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


def raise_descriptor_limit() -> int:
    """Raise this process's soft limit on open files to the hard one; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as error:
            logger.warning("could not raise the open-file limit from %s to %s: %s", soft, hard, error)
    return soft


def default_process_cap(descriptors: int) -> int:
    """Return the WebSockets one process may hold: its descriptors, less a reserve for the rest."""
    return max(descriptors - max(RESERVED_DESCRIPTORS, descriptors // 10), 1)


class ConnectionCaps:
    """The WebSockets open on this process, in all and per client address, against their caps."""

    def __init__(self, *, per_address: int, per_process: int) -> None:
        self.per_address = per_address
        self.per_process = per_process
        self.by_address: Counter[str] = Counter()
        self.total = 0
        self.refused = 0
        self.last_warning = float("-inf")

    def admit(self, address: str) -> str | None:
        """Count a new WebSocket from ``address`` in, or return why it is refused."""
        if self.per_process and self.total >= self.per_process:
            return f"this server holds {self.total} WebSockets, its limit (WEBSOCKET_MAX_CONNECTIONS)"
        if self.per_address and self.by_address[address] >= self.per_address:
            return (
                f"{address} holds {self.by_address[address]} WebSockets, "
                "the limit per address (WEBSOCKET_MAX_PER_ADDRESS)"
            )
        self.by_address[address] += 1
        self.total += 1
        return None

    def release(self, address: str) -> None:
        """Count a WebSocket from ``address`` out."""
        self.total -= 1
        self.by_address[address] -= 1
        if self.by_address[address] <= 0:
            del self.by_address[address]

    def refuse(self, address: str, why: str) -> None:
        """Log a refusal, at most one line per REFUSAL_LOG_INTERVAL with the count of the others."""
        self.refused += 1
        now = time.monotonic()
        if now - self.last_warning >= REFUSAL_LOG_INTERVAL:
            logger.warning(
                "handshake refused with 503 peer=%s: %s (%d refused since the last line)",
                address,
                why,
                self.refused,
            )
            self.last_warning, self.refused = now, 0


def client_host(protocol: WebSocketProtocol, request) -> str:
    """Return the client's address as Daphne will put it in the scope (proxy headers included)."""
    peer = protocol.transport.getPeer()
    address = [str(getattr(peer, "host", "-")), getattr(peer, "port", 0)]
    server = protocol.factory.server_class
    if server.proxy_forwarded_address_header:
        headers = {k.lower().encode("latin1"): v.encode("latin1") for k, v in request.headers.items()}
        address, _ = parse_x_forwarded_for(
            headers,
            server.proxy_forwarded_address_header,
            server.proxy_forwarded_port_header,
            server.proxy_forwarded_proto_header,
            address,
        )
    return str(address[0]) if address else "-"


def capped_connections(caps: ConnectionCaps) -> None:
    """Check the caps before Daphne makes an application for a handshake; count out on close."""
    original_connect, original_close = WebSocketProtocol.onConnect, WebSocketProtocol.onClose

    def on_connect(protocol: WebSocketProtocol, request):
        address = client_host(protocol, request)
        why = caps.admit(address)
        if why is None:
            protocol.counted_address = address
            return original_connect(protocol, request)
        caps.refuse(address, why)
        # What Daphne's onClose reads, for a connection that never got an application.
        protocol.server = protocol.factory.server_class
        protocol.server.protocol_connected(protocol)
        protocol.request, protocol.client_addr, protocol.muted = request, [address, 0], True
        raise ConnectionDeny(SERVICE_UNAVAILABLE, "Too many connections, try again later")

    def on_close(protocol: WebSocketProtocol, was_clean: bool, code, reason) -> None:
        address = getattr(protocol, "counted_address", None)
        if address is not None:
            protocol.counted_address = None
            caps.release(address)
        if hasattr(protocol, "server"):  # a connection that never reached its handshake has none
            original_close(protocol, was_clean, code, reason)

    WebSocketProtocol.onConnect = on_connect
    WebSocketProtocol.onClose = on_close


def apply(*, close: Callable[..., None], on_slow_client: Callable[[], None] | None = None) -> ConnectionCaps:
    """Install the limits into Daphne; ``close(protocol, code, reason)`` sends a close frame."""
    WebSocketProtocol.sendData = guarded_send_data(WebSocketProtocol.sendData, close, on_slow_client)
    header_deadlines()
    descriptors = raise_descriptor_limit()
    per_process = settings.WEBSOCKET_MAX_CONNECTIONS
    if per_process is None:
        per_process = default_process_cap(descriptors)
    caps = ConnectionCaps(per_address=settings.WEBSOCKET_MAX_PER_ADDRESS, per_process=per_process)
    capped_connections(caps)
    logger.info(
        "connection limits: %s WebSockets per process, %s per address, %s open files",
        per_process or "no limit",
        caps.per_address or "no limit",
        descriptors,
    )
    return caps
