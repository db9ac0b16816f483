"""permessage-deflate (RFC 7692) on Daphne's WebSockets, applied once from project.asgi.

Daphne never accepts a client's offer of compression. ``WEBSOCKET_COMPRESSION`` chooses:

- ``off``: no offer is accepted, as in stock Daphne;
- ``on``: context takeover both ways; the server compresses with a 12-bit window and memory
  level 5 and asks the client for a 12-bit window when its offer allows it;
- ``no-context-takeover``: every message compressed on its own, both ways. autobahn keeps each
  message's zlib objects until the next one, so this saved no memory; here they are freed
  at the end of each message.

When a connection ends, its zlib objects and any part of a message it was inflating are freed
at once, not when the garbage collector next breaks the connection's reference cycles.

A message shorter than ``WEBSOCKET_COMPRESSION_MIN_SIZE`` bytes is sent uncompressed.

autobahn 26.10.2 stops inflating a client's message at ``maxMessagePayloadSize``
(``WEBSOCKET_MAX_MESSAGE_SIZE``) and closes with 1009, so a deflate bomb costs no memory; earlier
releases inflated without bound. Hence the guard: on any other Daphne or autobahn, nothing is
applied and compression stays off.
"""

import logging
from collections.abc import Callable

import autobahn
import daphne
from autobahn.websocket.compress import (
    PERMESSAGE_COMPRESSION_EXTENSION,
    PerMessageDeflate,
    PerMessageDeflateOffer,
)
from autobahn.websocket.compress import PerMessageDeflateOfferAccept as Accept
from daphne.ws_protocol import WebSocketProtocol

logger = logging.getLogger(__name__)

DAPHNE_WRITTEN_FOR = "4.2.3"
AUTOBAHN_WRITTEN_FOR = "26.10.2"
MODES = ("off", "on", "no-context-takeover")
WINDOW_BITS = 12
MEMORY_LEVEL = 5

_applied = False


class ReleasingDeflate(PerMessageDeflate):
    """autobahn's permessage-deflate, freeing a direction's zlib object after each message when
    that direction has no context takeover (a new one is made for every message anyway)."""

    def end_compress_message(self) -> bytes:
        data = super().end_compress_message()
        if self.server_no_context_takeover:
            self._compressor = None
        return data

    def end_decompress_message(self) -> None:
        super().end_decompress_message()
        if self.client_no_context_takeover:
            self._decompressor = None


def accept_for(mode: str, max_message_size: int) -> Callable[[list, list[dict]], Accept | None]:
    """Return what accepts a client's offers in ``mode``: the first permessage-deflate offer that
    can be met. ``offered`` holds each offer's raw parameters: autobahn's parsed offer drops the
    value of ``client_max_window_bits``, the most the client may use, which the answer must respect."""
    no_takeover = mode == "no-context-takeover"

    def accept(offers: list, offered: list[dict]) -> Accept | None:
        for offer, params in zip(offers, offered, strict=False):
            if not isinstance(offer, PerMessageDeflateOffer):
                continue  # permessage-bzip2 and the like
            hint = params.get("client_max_window_bits", [True])[0]
            try:
                if not offer.accept_max_window_bits:
                    client_window = 0  # the client cannot be asked
                else:
                    client_window = WINDOW_BITS if hint is True else min(WINDOW_BITS, int(hint))
                return Accept(
                    offer,
                    request_no_context_takeover=no_takeover,
                    request_max_window_bits=client_window,
                    no_context_takeover=no_takeover or offer.request_no_context_takeover,
                    window_bits=min(WINDOW_BITS, offer.request_max_window_bits or WINDOW_BITS),
                    mem_level=MEMORY_LEVEL,
                    max_message_size=max_message_size or None,
                )
            except Exception as error:  # autobahn raises Exception for parameters it cannot meet
                logger.debug("permessage-deflate offer %r not accepted: %s", offer, error)
        return None

    return accept


def negotiating(original: Callable[..., None], accept: Callable[[list, list[dict]], Accept | None]):
    """Wrap ``succeedHandshake`` to answer the client's offers with ``accept``, and to give a
    deflate without context takeover the zlib objects that are freed after each message."""

    def succeed_handshake(protocol: WebSocketProtocol, res) -> None:
        offered = [
            params
            for name, params in protocol.websocket_extensions
            if name in PERMESSAGE_COMPRESSION_EXTENSION
        ]
        if offered:  # aligned with the offers autobahn parsed from the same list, in order
            protocol.perMessageCompressionAccept = lambda offers: accept(offers, offered)
        original(protocol, res)
        extension = protocol._perMessageCompress
        if type(extension) is PerMessageDeflate and (
            extension.server_no_context_takeover or extension.client_no_context_takeover
        ):
            extension.__class__ = ReleasingDeflate

    return succeed_handshake


def releasing_on_close(original: Callable[..., None]) -> Callable[..., None]:
    """Wrap ``connectionLost`` to drop the zlib objects and the inflated part of a message at once.

    A closed connection's objects sit in reference cycles until a full garbage collection, and a
    message refused once inflated (a fragmented deflate bomb) holds up to the size limit in
    ``frame_data``/``message_data``: 1 MiB a connection, RSS grew by that much per bomb."""

    def connection_lost(protocol: WebSocketProtocol, *reason) -> None:
        original(protocol, *reason)
        protocol._perMessageCompress = None
        protocol.frame_data = protocol.message_data = None

    return connection_lost


def skipping_small(original: Callable[..., None], min_size: int) -> Callable[..., None]:
    """Wrap ``sendMessage`` so that a payload under ``min_size`` bytes goes uncompressed."""

    def send_message(
        protocol: WebSocketProtocol, payload: bytes, isBinary=False, fragmentSize=None, sync=False, **options
    ) -> None:
        if len(payload) < min_size:
            options["doNotCompress"] = True
        original(protocol, payload, isBinary, fragmentSize, sync, **options)

    return send_message


def apply(*, mode: str, min_size: int, max_message_size: int) -> bool:
    """Negotiate permessage-deflate in ``mode`` on Daphne's handshakes, once; return whether it is on.

    ``min_size``: shorter messages are sent uncompressed; ``max_message_size``: the most a
    client's message may inflate to (also autobahn's ``maxMessagePayloadSize``).
    """
    global _applied
    if mode not in MODES:
        raise ValueError(f"WEBSOCKET_COMPRESSION must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "off":
        return False
    if _applied:
        return True
    if daphne.__version__ != DAPHNE_WRITTEN_FOR or autobahn.__version__ != AUTOBAHN_WRITTEN_FOR:
        logger.warning(
            "project.daphne_deflate was written for Daphne %s and autobahn %s, found %s and %s: "
            "compression stays off (an older autobahn inflates a message without bound)",
            DAPHNE_WRITTEN_FOR,
            AUTOBAHN_WRITTEN_FOR,
            daphne.__version__,
            autobahn.__version__,
        )
        return False
    accept = accept_for(mode, max_message_size)
    WebSocketProtocol.succeedHandshake = negotiating(WebSocketProtocol.succeedHandshake, accept)
    WebSocketProtocol.connectionLost = releasing_on_close(WebSocketProtocol.connectionLost)
    if min_size > 0:
        WebSocketProtocol.sendMessage = skipping_small(WebSocketProtocol.sendMessage, min_size)
    logger.info(
        "permessage-deflate: %s, %d-bit window, memory level %d%s",
        mode,
        WINDOW_BITS,
        MEMORY_LEVEL,
        f", messages under {min_size} bytes uncompressed" if min_size > 0 else "",
    )
    _applied = True
    return True
