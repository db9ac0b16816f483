"""Speed-ups for Daphne's connection path, applied once from project.asgi (measured: bench/).

What the profiler (py-spy, under `python -m bench` churn) showed and what is changed:

- autobahn pretty-prints its ~40 protocol options for a debug line on every new connection,
  whether or not debug logging is on (``pformat`` in ``_connectionMade``: 15% of Daphne's CPU
  under churn). It gets ``repr``: the same text on one line, computed in C.
- Daphne runs Twisted on a stock asyncio loop, created when ``daphne.server`` is imported,
  before the project can choose. Before the reactor starts, its loop is swapped for uvloop's
  (about +20% connections/s, see the README). ``EVENT_LOOP=asyncio`` keeps the stock loop.
  uvloop reports an error on a socket (libuv's poll sees EPOLLERR: a peer that reset the
  connection with data still unread, such as half a frame) by calling its reader once and then
  closing its poll for good, without telling the reactor. Twisted's one read took the data, not
  the error, so the connection was never seen to end (its consumer, presence row and gauge
  count leaked) and the next write to that descriptor raised "UVPoll closed" (found by
  ``python -m bench.fuzz``). On uvloop the reactor's read callback therefore asks the socket
  for a pending error after each read (SO_ERROR: 0.4 us, against 3.4 us for a peek) and, if
  there is one, reads on within the same call: Twisted reaches the end of the connection and
  uvloop forgets the poll.

- Twisted's reactor registers a connection's socket for writing (an epoll_ctl), waits for the
  loop to report it writable (one more turn of the loop), writes, and unregisters it (another
  epoll_ctl) for every message sent: 12% of Daphne's CPU under echo. An accepted connection
  that asks to write now gets one write at the end of the loop's current turn (what that turn
  queued goes out in one send), and is registered with the loop only if the socket took part
  of it.
- Every read and write event ran through Twisted's ``callWithLogger``, which asks the
  connection for its log prefix and copies a logging context around the call, for the legacy
  ``twisted.python.log`` lines that no part of this project writes: 10% of Daphne's CPU under
  echo. Events now run through a plain call that logs a failure the same way.

- Daphne's two periodic checks walk every connection in one go: the timeouts and pings every
  2 s, the finished applications every 1 s. With 15,000 connections held, each walk stopped the
  process for 70 ms or more (and sent a burst of pings), the worst round trips of a separate
  client (bench/pauses.py). They now go through the connections a slice at a time, every
  0.1 s, each connection still once per 2 s and 1 s.

- Daphne gives each connection's application an asyncio.Queue for what the client sends; it
  gets a project.inbox.Inbox, the same for its one reader in a tenth of the memory.

- autobahn copies its ~40 protocol options from the factory onto every connection (a 3.3 KB
  attribute dictionary each, the largest single part of an idle connection's memory). Daphne has
  one factory: its options are set once on Daphne's protocol class, where autobahn finds them (it
  copies only what a connection does not already have).

All reach into private names, so each is guarded by the version it was written for;
tests/test_daphne_speedups.py fails if the libraries change underneath.
"""

import asyncio
import logging
import math
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from functools import partial

import autobahn
import autobahn.websocket.protocol
import daphne
import twisted
import uvloop
from twisted.internet import asyncioreactor, tcp
from twisted.python import log

from project.inbox import Inbox

logger = logging.getLogger(__name__)
daphne_logger = logging.getLogger("daphne.server")  # Daphne's checks log as they did

AUTOBAHN_WRITTEN_FOR = "26.10.2"
TWISTED_WRITTEN_FOR = "26.10.0"
DAPHNE_WRITTEN_FOR = "4.2.3"
# How often a slice of Daphne's connections is checked (see checks_in_slices).
CHECK_TICK = 0.1


def cheap_autobahn_option_dump() -> bool:
    """Make autobahn's per-connection debug dump of its options cheap."""
    if autobahn.__version__ != AUTOBAHN_WRITTEN_FOR:
        logger.warning(
            "autobahn %s is not %s: its option dump is left as is", autobahn.__version__, AUTOBAHN_WRITTEN_FOR
        )
        return False
    autobahn.websocket.protocol.pformat = repr
    return True


def move_to_uvloop(reactor: asyncioreactor.AsyncioSelectorReactor) -> bool:
    """Move a Twisted asyncio reactor that has not started yet onto a new uvloop event loop.

    Daphne's reactor, when the ASGI module is imported by its command line (before
    ``Server.run``), has registered only its waker on the stock loop: that reader is moved
    over and the stock loop closed. Returns whether the reactor now runs on uvloop.
    """
    stock = reactor._asyncioEventloop
    if isinstance(stock, uvloop.Loop):
        return True
    if reactor.running or reactor._writers or reactor._timerHandle is not None or stock.is_running():
        logger.warning("Daphne's reactor is already in use: it stays on the stock asyncio loop")
        return False
    readers = list(reactor._readers)
    for reader in readers:
        reactor.removeReader(reader)
    loop = uvloop.new_event_loop()
    executor = getattr(stock, "_default_executor", None)  # ASGI_THREADS sets one
    if executor is not None:
        loop.set_default_executor(executor)
        stock._default_executor = None  # closing the stock loop would shut it down
    reactor._asyncioEventloop = loop
    for reader in readers:
        reactor.addReader(reader)
    stock.close()  # Daphne's Server.run makes the reactor's loop the current one
    return True


# Reads one read event may make to reach a socket's pending error (64 KiB each).
MAX_READS_PER_EVENT = 16


def reads_until_the_error(reactor: asyncioreactor.AsyncioSelectorReactor) -> None:
    """Make the reactor's read callback, when the socket holds an error, read on to it (see above)."""
    original = reactor._readOrWrite

    def read_or_write(selectable, read: bool) -> None:
        original(selectable, read)
        if read and selectable in reactor._readers and socket_error(selectable):
            # The data before the reset may take more than one read (64 KiB each); then the end.
            for _ in range(MAX_READS_PER_EVENT):
                original(selectable, True)
                if selectable not in reactor._readers:
                    return

    reactor._readOrWrite = read_or_write


def socket_error(selectable) -> bool:
    """Tell whether a socket has an error pending (a reset): one getsockopt, 0.4 us, no exception.

    Reading SO_ERROR clears it; the reads that follow then find the end of the connection.
    """
    sock = getattr(selectable, "socket", None)
    return sock is not None and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0


def call_logging_failures(selectable, function, *args):
    """Call ``function(*args)`` for a read or write event of ``selectable``; log what it raises.

    Twisted's ``callWithLogger`` without the logging context its legacy log lines would read.
    """
    try:
        return function(*args)
    except KeyboardInterrupt:
        raise
    except BaseException:
        log.err(system=type(selectable).__name__)


def plain_event_calls() -> None:
    """Make the asyncio reactor call its read and write callbacks without a logging context."""
    asyncioreactor.callWithLogger = call_logging_failures


def write_at_the_end_of_the_turn(reactor: asyncioreactor.AsyncioSelectorReactor) -> None:
    """Write what an accepted connection sends once the loop's current turn ends; register the
    socket for writing only when it did not take all of it (see above)."""
    register, unregister = reactor.addWriter, reactor.removeWriter
    # Connections with a write scheduled, not registered with the loop: a connection leaves it
    # when it stops writing (all sent) or, still wanting to write, is registered.
    scheduled: set = set()

    def add_writer(writer) -> None:
        if writer in scheduled or writer in reactor._writers:
            return
        if not isinstance(writer, tcp.Server):
            register(writer)
            return
        scheduled.add(writer)
        reactor._asyncioEventloop.call_soon(write_now, writer)

    def remove_writer(writer) -> None:
        if writer in scheduled:
            scheduled.discard(writer)
            return
        unregister(writer)

    def write_now(writer) -> None:
        if writer not in scheduled:
            return  # it stopped writing meanwhile (closed, aborted)
        call_logging_failures(writer, reactor._readOrWrite, writer, False)
        if writer in scheduled:  # the socket took part of it: write the rest when it can
            scheduled.discard(writer)
            register(writer)

    reactor.addWriter, reactor.removeWriter = add_writer, remove_writer


def in_slices(name: str, period: float, check: Callable, call_later: Callable | None = None) -> Callable:
    """Return a Daphne ``Server`` method that calls ``check(server, protocol, details)`` for every
    connection once per ``period`` seconds, a slice of them every CHECK_TICK (scheduled with
    ``call_later``, by default the reactor's)."""
    ticks = max(1, round(period / CHECK_TICK))

    def checker(server) -> None:
        state = server.__dict__.setdefault(f"_{name}_pass", {"left": deque(), "slice": 1})
        if not state["left"]:  # a new pass, over the connections there are now
            state["left"] = deque(server.connections)
            state["slice"] = math.ceil(len(state["left"]) / ticks)
        left = state["left"]
        for _ in range(min(state["slice"], len(left))):
            protocol = left.popleft()
            details = server.connections.get(protocol)
            if details is not None:
                check(server, protocol, details)
        if call_later is None:
            from twisted.internet import reactor  # Daphne's, installed by then

            reactor.callLater(CHECK_TICK, checker, server)
        else:
            call_later(CHECK_TICK, checker, server)

    return checker


def check_timeouts(server, protocol, details: dict) -> None:
    """Daphne's timeout_checker, for one connection."""
    protocol.check_timeouts()


def check_application(server, protocol, details: dict) -> None:
    """Daphne's application_checker, for one connection (its body, unchanged)."""
    disconnected = details.get("disconnected")
    application_instance = details.get("application_instance")
    overdue = disconnected and time.time() - disconnected > server.application_close_timeout
    if overdue and application_instance and not application_instance.done():
        daphne_logger.warning(
            "Application instance %r for connection %s took too long to shut down and was killed.",
            application_instance,
            repr(protocol),
        )
        application_instance.cancel()
    if application_instance and application_instance.done():
        try:
            exception = application_instance.exception()
        except asyncio.CancelledError:
            pass
        else:
            if exception:
                if isinstance(exception, KeyboardInterrupt):
                    server.stop()
                else:
                    daphne_logger.error("Exception inside application: %s", exception, exc_info=exception)
                    if not disconnected:
                        protocol.handle_exception(exception)
        del details["application_instance"]
        application_instance = None
    if not application_instance and disconnected:
        del server.connections[protocol]


def create_application(server, protocol, scope: dict):
    """Daphne's Server.create_application (its body), with an Inbox for the application's input."""
    assert "application_instance" not in server.connections[protocol]
    input_queue = Inbox()
    scope.setdefault("asgi", {"version": "3.0"})
    application_instance = server.application(
        scope=scope, receive=input_queue.get, send=partial(server.handle_reply, protocol)
    )
    if protocol not in server.connections:
        return None
    server.connections[protocol]["application_instance"] = asyncio.ensure_future(
        application_instance, loop=asyncio.get_event_loop()
    )
    return input_queue


def options_on_the_class() -> None:
    """Put the factory's protocol options on Daphne's protocol class each time they are set."""
    from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol

    original = WebSocketFactory.setProtocolOptions

    def set_protocol_options(factory, **options) -> None:
        original(factory, **options)
        if factory.protocol is WebSocketProtocol:  # Daphne's one factory: its class is its own
            for name in WebSocketProtocol.CONFIG_ATTRS:
                value = getattr(factory, name)
                # A function on a class would be bound to each connection: keep it as it is.
                setattr(WebSocketProtocol, name, staticmethod(value) if callable(value) else value)

    WebSocketFactory.setProtocolOptions = set_protocol_options


def checks_in_slices() -> bool:
    """Make Daphne's periodic checks go through the connections a slice at a time (see above)."""
    if daphne.__version__ != DAPHNE_WRITTEN_FOR:
        logger.warning(
            "daphne %s is not %s: its checks walk every connection at once",
            daphne.__version__,
            DAPHNE_WRITTEN_FOR,
        )
        return False
    from daphne.server import Server

    Server.timeout_checker = in_slices("timeouts", 2.0, check_timeouts)
    Server.application_checker = in_slices("applications", 1.0, check_application)
    Server.create_application = create_application
    options_on_the_class()
    return True


def apply(*, event_loop: str = "uvloop") -> None:
    """Install the speed-ups; ``event_loop`` is ``"uvloop"`` or ``"asyncio"`` (the stock loop).

    Logs the loop Daphne's reactor will run on.
    """
    cheap_autobahn_option_dump()
    checks_in_slices()
    # Daphne installs its reactor when daphne.server is imported; never install one here.
    reactor = sys.modules.get("twisted.internet.reactor")
    if not isinstance(reactor, asyncioreactor.AsyncioSelectorReactor):
        return
    if twisted.__version__ != TWISTED_WRITTEN_FOR:
        logger.warning(
            "Twisted %s is not %s: Daphne stays on the stock asyncio loop, with Twisted's own write path",
            twisted.__version__,
            TWISTED_WRITTEN_FOR,
        )
        logger.info("event loop: asyncio")
        return
    plain_event_calls()
    write_at_the_end_of_the_turn(reactor)
    if event_loop == "uvloop" and move_to_uvloop(reactor):
        reads_until_the_error(reactor)
        logger.info("event loop: uvloop")
        return
    logger.info("event loop: asyncio")
