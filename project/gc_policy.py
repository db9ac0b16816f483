"""How Daphne's process collects garbage: fewer cycles per connection, and none of start-up's objects walked.

Under connection churn the cyclic garbage collector took about 40% of Daphne's CPU (timed with
``gc.callbacks``), and a full (generation 2) collection paused every connection for up to
0.6 s: each closed connection left about 110 objects in reference cycles that only the collector
frees, and every full collection walked the ~100,000 objects start-up made (Django, Twisted, the
URL resolvers) that live until the process ends. Two changes:

- The cycles a connection leaves are broken where it ends, so that reference counting frees it
  at once: Daphne's upgraded HTTP request and its HTTP channel hold each other after the socket
  went to the WebSocket protocol (nothing ends them: the channel never hears of the socket
  again); autobahn resolves the protocol's ``is_closed`` future with the protocol itself.
- Start-up's objects are moved out of the collector's sight once the application is loaded
  (``gc.freeze()``), so is what survives a collection of the middle generation (connections
  held open, the state of the process), and the youngest generation is collected every 10,000
  allocations instead of 700: with next to no cycles left, most young objects are freed by
  reference counting, and a young collection mostly walked live connections' state for nothing.

The first reaches into Daphne and autobahn, so it is guarded by the versions it was written
for; tests/test_gc_policy.py fails if they change underneath.
"""

import gc
import logging
import time
from collections.abc import Callable

import autobahn
import daphne
from daphne.http_protocol import WebRequest
from daphne.ws_protocol import WebSocketProtocol

logger = logging.getLogger(__name__)

DAPHNE_WRITTEN_FOR = "4.2.3"
AUTOBAHN_WRITTEN_FOR = "26.10.2"


def release_upgraded_requests() -> None:
    """After Daphne hands a request's socket to a WebSocket protocol, part the request and its channel."""
    original = WebRequest.process

    def process(request: WebRequest):
        result = original(request)
        channel = getattr(request, "channel", None)  # a finished request may have none
        # Upgraded: Daphne took the socket for the WebSocket protocol and never finishes the
        # request (a refused upgrade is finished: its answer still needs the channel).
        if request.transport is None and not request.finished and channel is not None:
            if request in channel.requests:
                channel.requests.remove(request)
            request.channel = None
        return result

    WebRequest.process = process


def release_closed_protocols() -> None:
    """Once a WebSocket connection is lost, drop the futures autobahn resolved with the protocol."""
    # Daphne's class, as it is now: project.daphne_deflate may have wrapped it already.
    original = WebSocketProtocol.connectionLost

    def connection_lost(protocol: WebSocketProtocol, reason=None) -> None:
        try:
            if reason is None:
                original(protocol)
            else:
                original(protocol, reason)
        finally:
            protocol.is_closed = protocol.is_open = None

    WebSocketProtocol.connectionLost = connection_lost


def break_connection_cycles() -> bool:
    """Install both; return whether they were (only for the versions they were written for)."""
    if daphne.__version__ != DAPHNE_WRITTEN_FOR or autobahn.__version__ != AUTOBAHN_WRITTEN_FOR:
        logger.warning(
            "daphne %s / autobahn %s are not %s / %s: closed connections are left to the collector",
            daphne.__version__,
            autobahn.__version__,
            DAPHNE_WRITTEN_FOR,
            AUTOBAHN_WRITTEN_FOR,
        )
        return False
    release_upgraded_requests()
    release_closed_protocols()
    return True


# Allocations (net of frees) between two collections of the youngest generation; CPython's is 700.
YOUNG_THRESHOLD = 10_000
# Young collections between two of generation 1 (CPython's: 10). Each of those walks what the
# young ones let through since, up to this many times 10,000 objects: with 15,000 connections
# held, 10 made pauses of 50 to 120 ms; 2 keeps them short (and freezes survivors sooner).
MIDDLE_THRESHOLD = 2


def freeze_start_up() -> int:
    """Freeze what start-up made; return how many objects that was."""
    gc.collect()  # start-up's own garbage goes first: frozen, it would stay for good
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, gc.get_threshold()[2])
    return gc.get_freeze_count()


def freeze_survivors() -> None:
    """After each collection of generation 1 or 2, freeze what survived it.

    With 15,000 connections held, a full collection walked their ~3 million objects: pauses of
    1 to 3 s (bench/pauses.py). What survives two young collections is, here, the state of open
    connections and of the process; frozen, it is still freed by reference counting when its
    connection closes (the cycles are broken above), only never walked again. The price: a cycle
    that becomes garbage after it was frozen stays (echo_gc_frozen_objects shows the count).
    """

    def callback(phase: str, info: dict) -> None:
        if phase == "stop" and info["generation"] >= 1:
            gc.freeze()

    gc.callbacks.append(callback)


def time_collections(on_collection: Callable[[int, float], None]) -> None:
    """Call ``on_collection(generation, seconds)`` after every collection (its pause)."""
    started = [0.0]

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            on_collection(info["generation"], time.perf_counter() - started[0])

    gc.callbacks.append(callback)


def apply(*, on_collection: Callable[[int, float], None] | None = None) -> None:
    """Break the cycles of closed connections, freeze start-up's objects, collect the young less
    often; report each collection's pause to ``on_collection(generation, seconds)``."""
    break_connection_cycles()
    frozen = freeze_start_up()
    freeze_survivors()
    if on_collection is not None:
        time_collections(on_collection)
    logger.debug("gc: %d objects of start-up frozen", frozen)
