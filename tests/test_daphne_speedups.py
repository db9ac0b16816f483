"""project.daphne_speedups: pinned with the libraries it reaches into, and Daphne really on uvloop."""

import asyncio
import logging
import re
import socket
import threading

import autobahn
import autobahn.websocket.protocol
import pytest
import twisted
import uvloop
from twisted.internet import asyncioreactor

from project import daphne_speedups
from tests.servers import ROOT


def pinned(name: str) -> str:
    return re.search(rf"(?mi)^{name}==(\S+)$", (ROOT / "requirements.txt").read_text()).group(1)


def test_speedups_are_written_for_the_pinned_libraries():
    """An autobahn or Twisted upgrade in requirements.txt must come with a fresh look at them."""
    assert daphne_speedups.AUTOBAHN_WRITTEN_FOR == pinned("autobahn") == autobahn.__version__
    assert daphne_speedups.TWISTED_WRITTEN_FOR == pinned("Twisted") == twisted.__version__
    assert daphne_speedups.DAPHNE_WRITTEN_FOR == pinned("daphne") == daphne_speedups.daphne.__version__


def test_autobahn_dumps_its_options_in_one_cheap_line(monkeypatch):
    """The per-connection debug dump is computed in C (repr), the same text on one line."""
    monkeypatch.setattr(autobahn.websocket.protocol, "pformat", autobahn.websocket.protocol.pformat)
    assert daphne_speedups.cheap_autobahn_option_dump() is True
    assert autobahn.websocket.protocol.pformat is repr


def test_autobahn_is_left_alone_in_another_version(monkeypatch, caplog):
    monkeypatch.setattr(autobahn.websocket.protocol, "pformat", autobahn.websocket.protocol.pformat)
    original = autobahn.websocket.protocol.pformat
    monkeypatch.setattr(autobahn, "__version__", "99.0")
    with caplog.at_level(logging.WARNING, logger="project.daphne_speedups"):
        assert daphne_speedups.cheap_autobahn_option_dump() is False
    assert autobahn.websocket.protocol.pformat is original
    assert "autobahn 99.0 is not" in caplog.text


def test_a_moved_reactor_keeps_its_waker_timers_and_threads_on_uvloop():
    """The waker (how signals reach the reactor: SIGTERM's graceful shutdown), timers and calls
    from threads all work on the new loop (tests/test_shutdown_live.py sends the real SIGTERM)."""
    stock = asyncio.new_event_loop()
    reactor = asyncioreactor.AsyncioSelectorReactor(stock)
    assert daphne_speedups.move_to_uvloop(reactor) is True
    assert isinstance(reactor._asyncioEventloop, uvloop.Loop)
    assert stock.is_closed()
    seen = []

    def from_thread() -> None:
        seen.append(("thread", threading.get_ident() == main))
        reactor.callLater(0.05, finish)

    def finish() -> None:
        seen.append(("timer", reactor._asyncioEventloop.is_running()))
        reactor.stop()

    main = threading.get_ident()
    reactor.callLater(0, lambda: threading.Thread(target=reactor.callFromThread, args=(from_thread,)).start())
    reactor.callLater(10, reactor.stop)  # a bound, should the waker be lost
    reactor.run(installSignalHandlers=False)
    assert seen == [("thread", True), ("timer", True)]
    assert reactor.getReaders() == [reactor.waker]
    reactor._asyncioEventloop.close()


def test_a_running_reactor_is_not_moved(caplog):
    stock = asyncio.new_event_loop()
    reactor = asyncioreactor.AsyncioSelectorReactor(stock)
    reactor.callLater(1, lambda: None)  # something already scheduled on the stock loop
    with caplog.at_level(logging.WARNING, logger="project.daphne_speedups"):
        assert daphne_speedups.move_to_uvloop(reactor) is False
    assert reactor._asyncioEventloop is stock
    assert "stays on the stock asyncio loop" in caplog.text
    stock.close()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_daphne_says_which_loop_it_runs_on(start_daphne, loop):
    daphne = start_daphne(EVENT_LOOP=loop)
    assert f"event loop: {loop}" in daphne.log()


def test_writes_go_out_at_the_end_of_the_turn_and_a_partial_one_is_finished(monkeypatch):
    """A small write is sent without registering the socket; one the socket cannot take at once is
    registered, finished when the peer reads, and unregistered; every byte arrives in order."""
    monkeypatch.setattr(asyncioreactor, "callWithLogger", asyncioreactor.callWithLogger)
    daphne_speedups.plain_event_calls()
    reactor = asyncioreactor.AsyncioSelectorReactor(uvloop.new_event_loop())
    registrations, register = [], reactor.addWriter
    reactor.addWriter = lambda writer: registrations.append(writer) or register(writer)
    daphne_speedups.write_at_the_end_of_the_turn(reactor)
    from twisted.internet import protocol

    servers, registered = [], []
    factory = protocol.Factory.forProtocol(protocol.Protocol)
    factory.buildProtocol = lambda address: servers.append(protocol.Protocol()) or servers[-1]
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    big = bytes(range(256)) * (64 * 1024)  # 16 MiB: more than the socket buffers take
    received = bytearray()

    def write() -> None:
        if not servers:
            reactor.callLater(0.01, write)
            return
        servers[0].transport.write(b"small")
        reactor.callLater(
            0.2, lambda: registered.append(list(reactor._writers)) or servers[0].transport.write(big)
        )
        reactor.callLater(0.5, lambda: registered.append(list(reactor._writers)))
        reactor.callLater(0.6, read)

    def read() -> None:
        client.setblocking(False)
        try:
            while chunk := client.recv(1 << 20):
                received.extend(chunk)
        except BlockingIOError:
            pass
        if len(received) < len(big) + 5:
            reactor.callLater(0.01, read)
        else:
            reactor.callLater(0.1, lambda: registered.append(list(reactor._writers)) or reactor.stop())

    reactor.callLater(0, write)
    reactor.callLater(20, reactor.stop)  # a bound
    reactor.run(installSignalHandlers=False)
    client.close()
    port.stopListening()
    assert bytes(received) == b"small" + big
    # The small write went without registering the socket; the big one registered it until all went.
    assert registered[0] == []
    assert [type(writer).__name__ for writer in registrations] == ["Server"]
    assert [type(writer).__name__ for writer in registered[1]] == ["Server"]
    assert registered[2] == []
    reactor._asyncioEventloop.close()


def test_daphne_checks_every_connection_once_per_period_a_slice_at_a_time():
    """100 connections, a period of 2 s: each tick checks a twentieth, each connection once a pass;
    one that ended meanwhile is skipped, one that came is checked in the next pass."""
    checked, scheduled = [], []
    checker = daphne_speedups.in_slices(
        "test",
        2.0,
        lambda server, protocol, details: checked.append(protocol),
        call_later=lambda *a: scheduled.append(a),
    )

    class FakeServer:
        connections = {n: {} for n in range(100)}

    server = FakeServer()
    checker(server)
    assert checked == list(range(5)) and scheduled[-1][0] == daphne_speedups.CHECK_TICK
    del server.connections[7]
    server.connections[100] = {}
    for _ in range(19):
        checker(server)
    assert checked == [n for n in range(100) if n != 7]
    checked.clear()
    for _ in range(20):
        checker(server)
    assert sorted(checked) == [n for n in range(101) if n != 7]


def test_daphne_checks_are_left_alone_in_another_version(monkeypatch, caplog):
    from daphne.server import Server

    monkeypatch.setattr(Server, "timeout_checker", Server.timeout_checker)
    original = Server.timeout_checker
    monkeypatch.setattr(daphne_speedups.daphne, "__version__", "99.0")
    with caplog.at_level(logging.WARNING, logger="project.daphne_speedups"):
        assert daphne_speedups.checks_in_slices() is False
    assert Server.timeout_checker is original


def test_protocol_options_live_on_daphnes_class_not_on_each_connection(monkeypatch):
    """The factory's options land on Daphne's protocol class (autobahn then copies none onto a
    connection); a function among them stays a plain function, not a method of each connection."""
    from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol

    monkeypatch.setattr(WebSocketFactory, "setProtocolOptions", WebSocketFactory.setProtocolOptions)
    saved = {
        name: WebSocketProtocol.__dict__[name]
        for name in WebSocketProtocol.CONFIG_ATTRS
        if name in WebSocketProtocol.__dict__
    }
    daphne_speedups.options_on_the_class()
    factory = WebSocketFactory(object(), server="test")
    try:
        factory.setProtocolOptions(
            autoPingInterval=7, perMessageCompressionAccept=lambda offers: ("accepted", offers)
        )
        assert WebSocketProtocol.autoPingInterval == 7
        connection = WebSocketProtocol()
        assert connection.perMessageCompressionAccept([1]) == ("accepted", [1])
        assert "autoPingInterval" not in vars(connection)
    finally:
        for name in WebSocketProtocol.CONFIG_ATTRS:
            if name in saved:
                setattr(WebSocketProtocol, name, saved[name])
            elif name in WebSocketProtocol.__dict__:
                delattr(WebSocketProtocol, name)
