"""Connections that hold a slot without doing their part: slowloris handshakes and dead peers."""

import socket
import sqlite3
import time

import pytest

from tests.servers import non_reading_client

REQUEST = (
    b"GET /ws/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: L4kHN+1Bx7zKbxsDbqgzHw==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def trickle_until_closed(port: int, prefix: bytes, limit: float) -> float:
    """Send ``prefix`` then REQUEST one byte every 0.2 s; return how long until the server hung up."""
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
        sock.sendall(prefix)
        started = time.monotonic()
        for byte in REQUEST:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - started
            sock.settimeout(0.2)
            try:
                if sock.recv(4096) == b"":
                    return time.monotonic() - started
            except TimeoutError:
                pass
            except ConnectionResetError:
                return time.monotonic() - started
            if time.monotonic() - started > limit:
                break
    pytest.fail(f"the server kept a trickling request open for {limit} s")


def test_a_handshake_trickled_byte_by_byte_is_dropped(start_daphne):
    """Headers that take longer than HTTP_HEADER_TIMEOUT (2 s here) lose the connection."""
    server = start_daphne(HTTP_HEADER_TIMEOUT="2")
    held = trickle_until_closed(server.port, b"", limit=15)
    assert 1.5 < held < 6
    server.wait_for_log("request headers incomplete after 2.0 s")


def test_a_slow_second_request_on_a_kept_alive_connection_is_dropped_too(start_daphne):
    """After a full request and its response, the next request gets its own deadline."""
    server = start_daphne(HTTP_HEADER_TIMEOUT="2")
    first = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    held = trickle_until_closed(server.port, first, limit=15)
    assert held < 6


def test_an_idle_kept_alive_connection_is_closed_quietly(start_daphne):
    """A keep-alive connection that starts no new request is closed at the deadline, without a warning:
    browsers keep idle connections open, which is no attack."""
    server = start_daphne(HTTP_HEADER_TIMEOUT="1")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        while sock.recv(65536):
            pass  # the server closes the idle connection: recv returns b""
        assert time.monotonic() - started < 5
    assert "request headers incomplete" not in server.log()


def test_a_prompt_client_is_not_affected(start_daphne):
    """A WebSocket that completed its handshake lives on past the deadline."""
    server = start_daphne(HTTP_HEADER_TIMEOUT="1")
    sock = non_reading_client(server.port)
    time.sleep(2.5)
    sock.sendall(bytes([0x89, 0x80, 1, 2, 3, 4]))  # a masked, empty ping: the connection is still up
    sock.settimeout(5)
    assert sock.recv(2) == bytes([0x8A, 0x00]), "pong"
    sock.close()


def test_a_dead_peer_is_dropped_by_keepalive_and_its_presence_row_goes(start_daphne, live_database):
    """A peer that answers no ping is dropped after --ping-interval plus --ping-timeout, row and all."""
    server = start_daphne(args=["--ping-interval", "1", "--ping-timeout", "2"])
    dead = non_reading_client(server.port)  # it never reads, so it never answers a ping
    peer = f"127.0.0.1:{dead.getsockname()[1]}"
    server.wait_for_log(f"peer={peer} connected")
    started = time.monotonic()
    server.wait_for_log(f"peer={peer} closed", timeout=20)
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + 5
    while peer in presence_peers(live_database):
        assert time.monotonic() < deadline, "the dead peer's presence row stayed"
        time.sleep(0.1)
    dead.close()


def presence_peers(database) -> list[str]:
    with sqlite3.connect(database) as db:
        return [peer for (peer,) in db.execute("SELECT peer FROM echo_connection")]
