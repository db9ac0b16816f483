"""Bad input from a client gets a close frame with the right code and reason, never a bare reset."""

import asyncio
import contextlib
import os
import socket
import struct
import time
import urllib.request

import pytest
import websockets

HANDSHAKE = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: L4kHN+1Bx7zKbxsDbqgzHw==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def frame(opcode: int, payload: bytes, *, masked: bool = True, rsv: int = 0) -> bytes:
    """Encode one final frame as a client would (masked), or not."""
    head = bytes([0x80 | rsv << 4 | opcode])
    mask_bit = 0x80 if masked else 0
    if len(payload) < 126:
        head += bytes([mask_bit | len(payload)])
    else:
        head += bytes([mask_bit | 126]) + struct.pack("!H", len(payload))
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(byte ^ key[i % 4] for i, byte in enumerate(payload))


def close_frame_after(daphne, data: bytes, path: str = "/ws/raw/") -> tuple[int, str]:
    """Open a raw WebSocket, send ``data``, and return the code and reason of the server's close frame."""
    with socket.create_connection(("127.0.0.1", daphne.port), timeout=5) as sock:
        sock.sendall(HANDSHAKE.format(path=path).encode())
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            buffer += sock.recv(4096)
        assert buffer.startswith(b"HTTP/1.1 101")
        buffer = buffer.split(b"\r\n\r\n", 1)[1]
        sock.sendall(data)
        while True:
            while len(buffer) < 2:
                chunk = sock.recv(4096)
                assert chunk, "the server cut the connection without a close frame"
                buffer += chunk
            opcode, length = buffer[0] & 0x0F, buffer[1] & 0x7F
            start = 2
            if length == 126:
                length, start = struct.unpack("!H", buffer[2:4])[0], 4
            while len(buffer) < start + length:
                chunk = sock.recv(4096)
                assert chunk, "the server cut the connection without a close frame"
                buffer += chunk
            payload, buffer = buffer[start : start + length], buffer[start + length :]
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0], payload[2:].decode()


@pytest.mark.parametrize(
    "data, code",
    [
        (frame(0x1, b"caf\xc3"), 1007),  # text that is not UTF-8
        (frame(0x1, b"plain", masked=False), 1002),  # a client frame must be masked
        (frame(0x1, b"x", rsv=0b100), 1002),  # RSV1 set with no extension agreed
        (frame(0x3, b"x"), 1002),  # a reserved opcode
        (frame(0x9, b"p" * 126), 1002),  # a control frame longer than 125 bytes
        # Close frames the RFC forbids: each used to get a TCP reset, because the peer's close
        # made autobahn abort the connection with its own close frame still unsent.
        (frame(0x8, b"\x03"), 1002),  # a 1-byte close payload
        *((frame(0x8, struct.pack("!H", code)), 1002) for code in (999, 1004, 1005, 1006, 1015, 2999, 5000)),
        (frame(0x8, struct.pack("!H", 1000) + b"\xff\xfe"), 1007),  # a reason that is not UTF-8
        (frame(0x8, struct.pack("!H", 1000), rsv=0b010), 1002),  # a close frame with an RSV bit
        (frame(0x1, b"x", rsv=0b100) + frame(0x8, struct.pack("!H", 1000)), 1002),  # bad, then close
        (frame(0x1, b"caf\xc3") + frame(0x8, struct.pack("!H", 1000)), 1007),  # bad UTF-8, then close
    ],
    ids=[
        "invalid-utf8",
        "unmasked",
        "rsv-bit",
        "reserved-opcode",
        "long-ping",
        "close-1-byte",
        *(f"close-code-{code}" for code in (999, 1004, 1005, 1006, 1015, 2999, 5000)),
        "close-reason-not-utf8",
        "close-rsv-bit",
        "violation-then-close",
        "bad-utf8-then-close",
    ],
)
def test_protocol_abuse_gets_a_close_frame_with_the_right_code(daphne, data, code):
    """Invalid UTF-8 → 1007; protocol violations → 1002; each as a close frame, not a cut."""
    received_code, reason = close_frame_after(daphne, data)
    assert received_code == code
    assert reason, "the close frame says why"


def test_a_websocket_upgrade_over_http_1_0_gets_400(daphne):
    """RFC 6455 4.2.1: the handshake must be HTTP/1.1 or later; HTTP/1.0 is refused, not upgraded."""
    with socket.create_connection(("127.0.0.1", daphne.port), timeout=5) as sock:
        sock.sendall(HANDSHAKE.replace("HTTP/1.1", "HTTP/1.0").format(path="/ws/").encode())
        response = b""
        while chunk := sock.recv(4096):
            response += chunk
    assert response.split(b"\r\n")[0] == b"HTTP/1.0 400 Bad Request", response[:80]
    assert b"A WebSocket upgrade requires HTTP/1.1." in response


async def test_flooding_client_is_closed_with_1008_and_a_reason(daphne):
    """Past the message rate (20/s, bursts of 60 by default) a client is closed with 1008."""
    async with websockets.connect(daphne.ws_url + "/ws/") as ws:
        for n in range(200):
            await ws.send(f"flood {n}")
        replies = 0
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 5)
                replies += 1
    assert ws.protocol.close_rcvd.code == 1008
    assert ws.protocol.close_rcvd.reason == "too many messages: at most 20 a second"
    assert 55 <= replies <= 70, replies


async def test_a_person_typing_is_never_limited(daphne):
    """Ten messages a second for three seconds stays well inside the limit."""
    async with websockets.connect(daphne.ws_url + "/ws/") as ws:
        for n in range(30):
            await ws.send(f"typed {n}")
            assert await ws.recv() == f"Server: Hello. You said: typed {n}"
            await asyncio.sleep(0.1)


def test_a_client_that_answers_a_close_late_still_completes_the_closing_handshake(daphne):
    """The server waits at least a second for the client's answer to its close frame.

    autobahn's close-handshake timeout runs on txaio's batched timer, which rounds the deadline
    down to a whole second: a close sent at .8 s was given up 0.2 s later, the TCP connection
    cut and the consumer told 1006. The close is sent at .8 s here and answered 0.4 s later.
    """
    while not 0.78 <= time.time() % 1 < 0.8:
        time.sleep(0.005)
    with socket.create_connection(("127.0.0.1", daphne.port), timeout=5) as sock:
        peer = f"127.0.0.1:{sock.getsockname()[1]}"
        sock.sendall(HANDSHAKE.format(path="/ws/?group=no%20spaces").encode())
        received = b""
        while b"\x88" not in received.partition(b"\r\n\r\n")[2]:  # the server's close frame
            chunk = sock.recv(4096)
            assert chunk, "the server cut the connection without a close frame"
            received += chunk
        sock.settimeout(0.4)
        try:
            cut = sock.recv(4096) == b""
        except TimeoutError:
            cut = False  # still open, waiting for the answer
        except ConnectionResetError:
            cut = True
        assert not cut, "the server cut the connection before the client answered its close"
        sock.settimeout(5)
        sock.sendall(frame(0x8, struct.pack("!H", 1008)))
        with contextlib.suppress(ConnectionResetError):  # autobahn ends it with a reset
            while sock.recv(4096):
                pass  # the server ends the TCP connection once the handshake is complete
    assert f"peer={peer} closed code=1008" in daphne.wait_for_log(f"peer={peer} closed code=")


def test_clients_that_reset_mid_frame_are_all_seen_to_go(start_daphne):
    """A peer that sends half a frame and resets the connection ends its consumer, every time.

    On uvloop the reset with unread data once went unnoticed: the consumer, its presence row and the
    open-connections gauge leaked, and the next write to the descriptor raised "UVPoll closed".
    """
    server = start_daphne(METRICS_PUBLIC="1", WEBSOCKET_RATE="0")
    for n in range(COUNT := 150):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(HANDSHAKE.format(path="/ws/" if n % 2 else "/ws/raw/").encode())
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            buffer += sock.recv(4096)
        whole = frame(0x2, os.urandom(20 + n))
        sock.sendall(whole[: len(whole) // 2])
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset right behind half a frame: both reach the server in one event
    deadline = time.monotonic() + 15
    while (gauge := open_connections(server)) != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert gauge == 0, f"{gauge:.0f} of {COUNT} reset connections never ended"
    assert "UVPoll" not in server.log()


def open_connections(server) -> float:
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    gauge = next(line for line in text.splitlines() if line.startswith("echo_connections_open "))
    return float(gauge.split()[1])
