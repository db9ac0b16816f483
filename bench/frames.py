"""Raw RFC 6455 for the fuzzer (bench/fuzz.py): frames and handshakes encoded exactly as asked, however
wrong; the server's frames decoded strictly; a raw client socket that reads while it writes; and the
cases of the frames and handshake families, each a pure function of a seeded random.Random.
"""

import base64
import contextlib
import errno
import hashlib
import random
import select
import socket
import struct
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
KNOWN_OPCODES = {CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG}
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
DEFAULT_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def server_may_send(code: int) -> bool:
    """Whether a server may put ``code`` in its close frame (RFC 6455 7.4, IANA registry)."""
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1013) or 3000 <= code <= 4999


def encode_length(length: int, form: str = "minimal") -> bytes:
    """The 7-bit length field (mask bit clear) and its extension: ``form`` is minimal, 16 or 64."""
    if form == "minimal":
        form = "7" if length < 126 else "16" if length < 65536 else "64"
    if form == "7":
        return bytes([length & 0x7F])
    if form == "16":
        return bytes([126]) + struct.pack("!H", length & 0xFFFF)
    return bytes([127]) + struct.pack("!Q", length & 0xFFFFFFFFFFFFFFFF)


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = b"\x37\xfa\x21\x3d",
    length: int | None = None,
    form: str = "minimal",
) -> bytes:
    """Encode one frame: masked with ``mask`` (None: unmasked), declaring ``length`` (default: the real
    one) in the length ``form`` asked for."""
    head = bytes([(0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0xF)])
    field = bytearray(encode_length(len(payload) if length is None else length, form))
    if mask is None:
        return head + bytes(field) + payload
    field[0] |= 0x80
    return head + bytes(field) + mask + apply_mask(payload, mask)


def apply_mask(payload: bytes, mask: bytes) -> bytes:
    if not payload:
        return b""
    repeated = (mask * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(payload), "big")


def close_payload(code: int | None, reason: bytes = b"") -> bytes:
    return b"" if code is None else struct.pack("!H", code) + reason


def accept_for(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def handshake_headers(subprotocol: str | None = None, key: str = DEFAULT_KEY) -> list[tuple[str, str]]:
    """The headers of a valid opening handshake, in order."""
    headers = [("Host", "127.0.0.1"), ("Upgrade", "websocket"), ("Connection", "Upgrade")]
    headers += [("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")]
    return headers + ([("Sec-WebSocket-Protocol", subprotocol)] if subprotocol else [])


def request(path: str, headers: list[tuple[str, str]], *, line: str | None = None) -> bytes:
    """An HTTP request (``line`` replaces ``GET path HTTP/1.1``); header values are Latin-1 bytes."""
    text = (line or f"GET {path} HTTP/1.1") + "\r\n"
    text += "".join(f"{name}: {value}\r\n" for name, value in headers) + "\r\n"
    return text.encode("latin-1", "replace")


class Response(NamedTuple):
    status: int | None  # None: not an HTTP status line
    line: str
    headers: dict[str, list[str]]


def parse_response(head: bytes) -> Response:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[0].startswith("HTTP/") and parts[1].isdigit() else None
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return Response(status, lines[0], headers)


class Frame(NamedTuple):
    fin: bool
    rsv: int
    opcode: int
    masked: bool
    payload: bytes


class BadServerFrame(ValueError):
    """The server sent something that is not a valid server-to-client frame."""


def next_frame(buffer: bytearray) -> Frame | None:
    """Take one complete frame off the front of ``buffer``; None if it holds only part of one."""
    if len(buffer) < 2:
        return None
    first, second = buffer[0], buffer[1]
    length, at = second & 0x7F, 2
    if length == 126:
        if len(buffer) < 4:
            return None
        length, at = struct.unpack_from("!H", buffer, 2)[0], 4
    elif length == 127:
        if len(buffer) < 10:
            return None
        length, at = struct.unpack_from("!Q", buffer, 2)[0], 10
    masked = bool(second & 0x80)
    mask = bytes(buffer[at : at + 4]) if masked else b""
    at += 4 if masked else 0
    if len(buffer) < at + length:
        if length > 1 << 31:
            raise BadServerFrame(f"a frame header declaring {length} bytes")
        return None
    payload = bytes(buffer[at : at + length])
    del buffer[: at + length]
    payload = apply_mask(payload, mask) if masked else payload
    return Frame(bool(first & 0x80), first >> 4 & 7, first & 0xF, masked, payload)


def check_server_frame(item: Frame) -> None:
    """Raise BadServerFrame for what RFC 6455 forbids a server to send (with no extension agreed)."""
    if item.masked:
        raise BadServerFrame("a masked frame")
    if item.rsv:
        raise BadServerFrame(f"RSV bits {item.rsv:03b} set")
    if item.opcode not in KNOWN_OPCODES:
        raise BadServerFrame(f"reserved opcode {item.opcode:#x}")
    if item.opcode >= CLOSE and (not item.fin or len(item.payload) > 125):
        raise BadServerFrame(f"a fragmented or {len(item.payload)}-byte control frame")
    if item.opcode == CLOSE:
        if len(item.payload) == 1:
            raise BadServerFrame("a close frame with a 1-byte payload")
        try:
            item.payload[2:].decode()
        except UnicodeDecodeError:
            raise BadServerFrame(f"a close reason that is not UTF-8: {item.payload[2:]!r}") from None


def close_code(item: Frame) -> int | None:
    return struct.unpack("!H", item.payload[:2])[0] if len(item.payload) >= 2 else None


class RawClient:
    """A non-blocking loopback socket that keeps reading what arrives while it writes.

    ``ended`` says how the server ended the TCP connection: None (it has not), "fin" or "reset".
    ``sent_all`` is False once a write failed because the server had gone.
    """

    def __init__(self, port: int, *, receive_buffer: int | None = None, timeout: float = 5.0) -> None:
        self.sock = socket.socket()
        if receive_buffer:  # before connecting, so that the window the server sees is small from the start
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.inbox = bytearray()
        self.received = 0
        self.ended: str | None = None
        self.sent_all = True
        self.write_closed = False

    def _read(self) -> bool:
        try:
            chunk = self.sock.recv(262144)
        except BlockingIOError:
            return False
        except OSError as error:
            if error.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
                self.ended = "reset"
                return False
            raise
        if not chunk:
            self.ended = self.ended or "fin"
            return False
        self.inbox += chunk
        self.received += len(chunk)
        return True

    def send(self, data: bytes, deadline: float, *, read: bool = True) -> bool:
        """Write ``data`` before ``deadline``, reading meanwhile unless ``read`` is False."""
        view = memoryview(data)
        while view and self.sent_all:
            if time.monotonic() > deadline:
                return False
            wanted_read = [self.sock] if read and self.ended is None else []
            readable, writable, _ = select.select(wanted_read, [self.sock], [], 0.2)
            if readable:
                self._read()
            if writable:
                try:
                    view = view[self.sock.send(view[:262144]) :]
                except BlockingIOError:
                    continue
                except OSError as error:
                    if error.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED):
                        raise
                    self.sent_all = False
        return not view

    def wait(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for bytes (or the end of the connection); True if some came."""
        if self.ended:
            return False
        readable, _, _ = select.select([self.sock], [], [], max(0.0, seconds))
        return bool(readable) and self._read()

    def shutdown_write(self) -> None:
        self.write_closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close(self, *, reset: bool = False) -> None:
        if reset and self.sock.fileno() >= 0:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


# --- Cases: frames and handshakes as the fuzzer mutates them ---------------------------------------

LIMIT = 65536  # WEBSOCKET_MAX_MESSAGE_SIZE of the fuzzed servers: cases at the limit stay cheap
PREFIX = "Server: Hello. You said: "
PATHS = [("/ws/", None), ("/ws/raw/", None), ("/ws/", "echo.json")]
NAMES = {CONTINUATION: "continuation", TEXT: "text", BINARY: "binary", CLOSE: "close", PING: "ping"}
NAMES[PONG] = "pong"
FORBIDDEN_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]
ALLOWED_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4000, 4999]
BAD_UTF8 = [b"\xff", b"\xc3(", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82(", b"\x80"]
HOSTILE_GROUPS = ["", " ", "all", "a" * 90, "a" * 91, "a" * 5000, "../x", "group.all", "a b", "é", "\x00"]
HOSTILE_GROUPS += ["*", "a,b", "\n", "<script>", "asgi__group__all", "group.x!y", "%00", "😀"]
EVIL_ORIGINS = ["http://evil.com", "https://evil.com:443", "http://127.0.0.1.evil.com", "http://evil.com#1"]
EVIL_ORIGINS += ["http://localhost.evil.com", "http://127.0.0.1@evil.com", "http://evil.com/127.0.0.1"]
ODD_ORIGINS = [
    "null",
    "",
    "file://",
    "http://127.0.0.1:9",
    "HTTP://LOCALHOST",
    "http://[::1]",
    "http://é.com",
]
ODD_ORIGINS += ["x" * 9000, "http://127.0.0.1:99999", "http://127.0.0.1.", " http://127.0.0.1"]


@dataclass
class Case:
    """What one case sends; every field follows from (seed, number)."""

    seed: int
    number: int
    family: str = ""
    parts: list[str] = field(default_factory=list)  # what was sent, in words
    path: str = "/ws/"
    subprotocol: str | None = None
    key: str | None = None  # the one valid Sec-WebSocket-Key sent, to check the accept value
    request: bytes | None = None  # None: a valid handshake for path and subprotocol
    after_request: str | None = None  # "shut" or "drop" right after the request (cut handshakes)
    reject: bool = False  # a 101 is a failure: RFC 6455 wants this handshake refused
    sends: list = field(default_factory=list)  # after the 101: bytes, a pause (float), "shut" or "drop"
    intact: bool = True  # what was sent ends on a frame boundary, so our close frame can follow
    closes: bool = False  # the client sent a close frame itself
    empty_close: bool = False  # ... with no status code (the server may echo that)
    patience: float = 0.25  # seconds without news before the connection counts as kept open
    replies: int = 0  # data messages to wait for (echo.json: answers, not welcome or presence)
    unread: bool = False  # the client does not read while it sends (and has a tiny receive buffer)
    server: str = "main"  # or "limited": the Daphne with the default rate limit

    @property
    def what(self) -> str:
        protocol = f" [{self.subprotocol}]" if self.subprotocol else ""
        return f"{self.path[:100]}{protocol}: " + "; ".join(self.parts)

    @property
    def replay(self) -> str:
        return f"python -m bench.fuzz --seed {self.seed} --case {self.number}"

    def add(self, data: bytes | str, words: str) -> None:
        self.sends.append(data)
        self.parts.append(words)

    def expect_close(self) -> None:
        self.patience = 3.0


def mask(r: random.Random) -> bytes:
    return r.randbytes(4)


def text_bytes(r: random.Random, low: int = 0, high: int = 40) -> bytes:
    return "".join(r.choice("abcxyz 019\n\x00é€中😀") for _ in range(r.randint(low, high))).encode()


def bad_utf8(r: random.Random) -> bytes:
    return text_bytes(r, 0, 8) + r.choice(BAD_UTF8) + text_bytes(r, 0, 4)


FRAME_KINDS: list[tuple[Callable[[Case, random.Random], None], float]] = []


def frame_kind(weight: float):
    def register(function):
        FRAME_KINDS.append((function, weight))
        return function

    return register


@frame_kind(3)
def reserved_opcode(c: Case, r: random.Random) -> None:
    op, fin = r.choice([3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF]), r.random() < 0.8
    payload = r.randbytes(r.choice([r.randint(0, 40), r.randint(126, 300)]))
    c.add(
        frame(op, payload, fin=fin, mask=mask(r)), f"reserved opcode {op:#x}, {len(payload)} B, fin={fin:d}"
    )
    c.expect_close()


@frame_kind(3)
def rsv_bits(c: Case, r: random.Random) -> None:
    rsv, op = r.randint(1, 7), r.choice([TEXT, BINARY, PING, PONG])
    c.add(frame(op, b"rsv", rsv=rsv, mask=mask(r)), f"{NAMES[op]} frame with RSV bits {rsv:03b}")
    c.expect_close()


@frame_kind(3)
def unmasked(c: Case, r: random.Random) -> None:
    op, payload = r.choice([(TEXT, b"plain"), (BINARY, r.randbytes(9)), (PING, b"p"), (CLOSE, b"\x03\xe8")])
    c.add(frame(op, payload, mask=None), f"unmasked {NAMES[op]} frame")
    c.expect_close()


@frame_kind(3)
def declared_longer(c: Case, r: random.Random) -> None:
    op, payload = r.choice([TEXT, BINARY]), b"a" * r.randint(0, 200)
    declared = r.choice([len(payload) + r.randint(1, 1000), LIMIT + r.randint(1, 10**6)])
    data = frame(op, payload, length=declared, mask=mask(r))
    c.add(data, f"{NAMES[op]} declaring {declared} B, {len(payload)} sent")
    c.intact = False
    if declared > LIMIT:
        c.expect_close()
    if r.random() < 0.5:
        c.add("shut", "then FIN")


@frame_kind(2)
def declared_shorter(c: Case, r: random.Random) -> None:
    op, payload = r.choice([TEXT, BINARY]), b"b" * r.randint(4, 80)
    declared = r.randint(0, len(payload) - 1)
    data = frame(op, payload, length=declared, mask=mask(r))
    c.add(data, f"{NAMES[op]} declaring {declared} B, {len(payload)} sent (the rest reads as a header)")
    c.intact, c.patience = False, 1.0


@frame_kind(3)
def length_encoding(c: Case, r: random.Random) -> None:
    n, variant = r.randint(0, 125), r.randrange(4)
    if variant == 0:
        c.add(frame(BINARY, b"c" * n, form="16", mask=mask(r)), f"binary {n} B in a 16-bit length")
    elif variant == 1:
        n = r.randint(0, 65535)
        c.add(frame(BINARY, b"c" * n, form="64", mask=mask(r)), f"binary {n} B in a 64-bit length")
    elif variant == 2:
        data = frame(BINARY, b"c" * n, length=1 << 63 | n, form="64", mask=mask(r))
        c.add(data, f"binary {n} B, 64-bit length with its top bit set")
    else:
        declared = r.randint(LIMIT + 1, 1 << 62)
        c.add(frame(BINARY, b"", length=declared, form="64", mask=mask(r)), f"binary declaring {declared} B")
    c.intact, c.patience = variant < 2, 1.0 if variant < 2 else 3.0


@frame_kind(4)
def fragments(c: Case, r: random.Random) -> None:
    t, split = text_bytes(r, 1), "aé€😀".encode()
    at = r.randint(1, len(split) - 1)
    cont = CONTINUATION
    variants = [  # (what, frames as (opcode, payload, fin), a violation)
        ("continuation with no message", [(cont, t, 1)], True),
        ("unfinished continuation with no message", [(cont, t, 0), (cont, t, 1)], True),
        ("text started, then a new text frame", [(TEXT, t, 0), (TEXT, t, 1)], True),
        ("binary started, then a text frame", [(BINARY, b"ab", 0), (TEXT, t, 1)], True),
        ("binary fragments, a ping and a pong between",
         [(BINARY, b"a", 0), (PING, b"p", 1), (cont, b"b", 0), (PONG, b"", 1), (cont, b"c", 1)], False),
        ("a character split across text fragments", [(TEXT, split[:at], 0), (cont, split[at:], 1)], False),
        ("empty fragments", [(TEXT, b"", 0), (cont, b"", 0), (cont, b"x", 1)], False),
        ("text started, never finished", [(TEXT, t, 0), (cont, t, 0)], False),
        ("text started, then a close", [(TEXT, t, 0), (CLOSE, b"\x03\xe8", 1)], False),
    ]  # fmt: skip
    words, frames, violation = r.choice(variants)
    c.add(b"".join(frame(op, data, fin=bool(fin), mask=mask(r)) for op, data, fin in frames), words)
    c.closes = frames[-1][0] == CLOSE
    c.replies += frames[-1][0] == CONTINUATION and frames[-1][2] and not violation
    if violation or c.closes:
        c.expect_close()


@frame_kind(3)
def long_control(c: Case, r: random.Random) -> None:
    op, n = r.choice([PING, PONG, CLOSE]), r.randint(126, 400)
    payload = close_payload(1000, b"r" * (n - 2)) if op == CLOSE else r.randbytes(n)
    c.add(frame(op, payload, mask=mask(r)), f"{NAMES[op]} frame of {n} B")
    c.closes = op == CLOSE
    c.expect_close()


@frame_kind(2)
def fragmented_control(c: Case, r: random.Random) -> None:
    op = r.choice([PING, PONG, CLOSE])
    payload = close_payload(1000) if op == CLOSE else b"frag"
    c.add(frame(op, payload, fin=False, mask=mask(r)), f"{NAMES[op]} frame with FIN clear")
    if r.random() < 0.5:
        c.add(frame(CONTINUATION, b"end", mask=mask(r)), "a continuation")
    c.closes = op == CLOSE
    c.expect_close()


@frame_kind(5)
def close_frames(c: Case, r: random.Random) -> None:
    variant = r.randrange(5)
    code = [None, None, r.choice(FORBIDDEN_CODES), r.choice(ALLOWED_CODES), r.randint(0, 65535)][variant]
    reason, words = b"", ""
    if variant >= 2 and r.random() < 0.5:
        invalid = r.random() < 0.3
        reason = bad_utf8(r) if invalid else text_bytes(r)[:123]
        words = f" and a reason {reason[:20]!r}" + (" (not UTF-8)" if invalid else "")
    if variant == 1:
        c.add(frame(CLOSE, b"\x03", mask=mask(r)), "close frame of 1 byte")
    else:
        c.add(frame(CLOSE, close_payload(code, reason), mask=mask(r)), f"close frame, code {code}{words}")
    c.closes, c.empty_close = True, variant == 0
    c.expect_close()


@frame_kind(3)
def invalid_utf8(c: Case, r: random.Random) -> None:
    bad, variant = bad_utf8(r), r.randrange(3)
    if variant == 0:
        c.add(frame(TEXT, bad, mask=mask(r)), f"text {bad!r}")
    elif variant == 1:
        data = frame(TEXT, b"ok ", fin=False, mask=mask(r)) + frame(CONTINUATION, bad, mask=mask(r))
        c.add(data, f"text fragments, the second {bad!r}")
    else:
        data = frame(TEXT, b"x\xe2\x82", fin=False, mask=mask(r)) + frame(CONTINUATION, b"A", mask=mask(r))
        c.add(data, "text fragments, a character begun and not finished")
    c.expect_close()


@frame_kind(3)
def bad_then_close(c: Case, r: random.Random) -> None:
    bad, words = r.choice([
        (frame(5, b"x", mask=mask(r)), "reserved opcode 0x5"),
        (frame(TEXT, b"x", rsv=4, mask=mask(r)), "RSV1 set"),
        (frame(TEXT, b"plain", mask=None), "an unmasked text frame"),
        (frame(TEXT, bad_utf8(r), mask=mask(r)), "text that is not UTF-8"),
        (frame(PING, b"p" * 126, mask=mask(r)), "a 126-byte ping"),
    ])  # fmt: skip
    c.add(bad + frame(CLOSE, close_payload(1000), mask=mask(r)), f"{words}, then a close, in one write")
    c.closes = True
    c.expect_close()


@frame_kind(2)
def ping_flood(c: Case, r: random.Random) -> None:
    n = r.randint(50, 2000)
    c.add(b"".join(frame(PING, b"q" * r.randint(0, 125), mask=mask(r)) for _ in range(n)), f"{n} pings")


@frame_kind(0.25)
def unread_ping_flood(c: Case, r: random.Random) -> None:
    c.path, c.subprotocol, c.unread, c.patience = "/ws/raw/", None, True, 2.0
    n = 12 * 2**20 // 131
    c.add(frame(PING, b"u" * 125, mask=mask(r)) * n, f"{n} pings of 125 B (12 MiB), not reading the pongs")


@frame_kind(4)
def size_limit(c: Case, r: random.Random) -> None:
    variant, op = r.randrange(5), r.choice([TEXT, BINARY])
    if variant == 0:
        c.add(frame(op, b"s" * LIMIT, mask=mask(r)), f"{NAMES[op]} of exactly the limit, {LIMIT} B")
        c.replies, c.patience = c.replies + 1, 2.0
    elif variant == 1:
        c.add(frame(op, b"s" * (LIMIT + 1), mask=mask(r)), f"{NAMES[op]} of limit + 1 B")
        c.expect_close()
    elif variant == 2:
        cuts = sorted(r.sample(range(1, LIMIT), r.randint(1, 3)))
        pieces = [b"s" * (b - a) for a, b in zip([0, *cuts], [*cuts, LIMIT + 1], strict=True)]
        last = len(pieces) - 1
        data = b"".join(
            frame(CONTINUATION if i else op, p, fin=i == last, mask=mask(r)) for i, p in enumerate(pieces)
        )
        c.add(data, f"{NAMES[op]} of limit + 1 B in {len(pieces)} fragments")
        c.expect_close()
    else:
        c.path, c.subprotocol = "/ws/", None
        n = LIMIT - len(PREFIX) + (1 if variant == 3 else 0)
        c.add(frame(TEXT, b"t" * n, mask=mask(r)), f"text of {n} B: the echo would be {n + len(PREFIX)} B")
        c.replies, c.patience = c.replies + 1, 2.0


@frame_kind(3)
def truncated(c: Case, r: random.Random) -> None:
    op = r.choice([TEXT, BINARY])
    data = frame(op, b"v" * r.choice([r.randint(0, 200), r.randint(126, LIMIT)]), mask=mask(r))
    cut, ending = r.randint(1, len(data) - 1), r.choice(["shut", "drop"])
    c.add(data[:cut], f"{NAMES[op]} frame cut after {cut} of {len(data)} B")
    c.add(ending, "then FIN" if ending == "shut" else "then reset")
    c.intact = False


@frame_kind(3)
def random_bytes(c: Case, r: random.Random) -> None:
    if r.random() < 0.5:
        data = r.randbytes(r.randint(2, 64))
        c.add(data, f"random bytes {data[:16].hex()}…")
    else:
        data = bytearray(frame(r.choice([TEXT, BINARY, PING]), text_bytes(r, 1), mask=mask(r)))
        flips = [r.randrange(len(data) * 8) for _ in range(r.randint(1, 3))]
        for bit in flips:
            data[bit // 8] ^= 1 << bit % 8
        c.add(bytes(data), f"a frame with bits {flips} flipped")
    c.intact, c.patience = False, 1.0


def frames_case(c: Case, r: random.Random) -> None:
    """Valid messages now and then, one kind of bad (or odd) frames, sometimes in small writes."""
    c.path, c.subprotocol = r.choice(PATHS)
    if r.random() < 0.3:
        n = r.randint(1, 3)
        data = b"".join(frame(r.choice([TEXT, BINARY]), text_bytes(r), mask=mask(r)) for _ in range(n))
        c.add(data, f"{n} valid messages")
        c.replies = n
    kinds, weights = zip(*FRAME_KINDS, strict=True)
    r.choices(kinds, weights)[0](c, r)
    if r.random() < 0.15 and not c.unread:  # the same bytes in small writes, a few ms apart
        chunks = []
        for item in c.sends:
            if isinstance(item, bytes) and len(item) > 2:
                cuts = sorted(r.sample(range(1, len(item)), min(3, len(item) - 1)))
                chunks += [
                    x for a, b in zip([0, *cuts], [*cuts, len(item)], strict=True) for x in (item[a:b], 0.005)
                ]
            else:
                chunks.append(item)
        c.sends = chunks
        c.parts.append("in split writes")


def handshake_case(c: Case, r: random.Random) -> None:
    """One kind of odd or bad opening handshake; ``c.reject`` when RFC 6455 wants it refused."""
    c.path, c.subprotocol = r.choice(PATHS)
    c.key = base64.b64encode(r.randbytes(16)).decode()
    headers, line = handshake_headers(c.subprotocol, c.key), None

    def put(name: str, value: str | None, words: str) -> None:
        headers[:] = [(n, v) for n, v in headers if n != name]
        headers.extend([(name, value)] if value is not None else [])
        c.parts.append(words)

    variant = r.randrange(13)
    if variant == 0:
        line, c.reject = f"GET {c.path} HTTP/1.0", True
        c.parts.append("HTTP/1.0 upgrade")
    elif variant == 1:
        how, key = r.randrange(3), c.key
        c.key, c.reject = None, True
        if how == 0:
            put("Sec-WebSocket-Key", None, "no Sec-WebSocket-Key")
        elif how == 1:
            other = r.choice([key, base64.b64encode(r.randbytes(16)).decode()])
            headers.append(("Sec-WebSocket-Key", other))
            c.parts.append("Sec-WebSocket-Key twice" + (" (same value)" if other == key else ""))
        else:
            bad = r.choice(["", "abc", "!" * 22 + "==", "dGhlIHNhbXBsZSBub25jZQ", "é" * 24])
            bad = r.choice([bad, base64.b64encode(r.randbytes(r.choice([15, 17]))).decode()])
            put("Sec-WebSocket-Key", bad, f"Sec-WebSocket-Key {bad!r}")
    elif variant == 2:
        version = r.choice(["0", "7", "12", "14", "99", "", "abc", None])  # autobahn also speaks 8 (hybi-10)
        put("Sec-WebSocket-Version", version, f"Sec-WebSocket-Version {version!r}")
        c.reject = True
    elif variant == 3:
        name, value = r.choice([("Upgrade", None), ("Connection", None), ("Upgrade", "h2c"), ("Host", None)])
        put(name, value, f"{name}: {value}" if value else f"no {name} header")
        c.reject = True
    elif variant == 4:
        origin = r.choice(EVIL_ORIGINS + ODD_ORIGINS)
        put(
            "Origin",
            origin,
            f"Origin {origin[:60]!r}" + (f", {len(origin)} chars" if len(origin) > 60 else ""),
        )
        c.reject = origin in EVIL_ORIGINS
    elif variant == 5:
        put("Host", "evil.com", "Host: evil.com")
        if r.random() < 0.5:
            put("Origin", "http://evil.com", "Origin: http://evil.com")
            c.reject = True
    elif variant == 6:
        how, size = r.randrange(3), r.choice([8000, 20000, 100000, 300000])
        if how == 0:
            headers.append(("X-Big", "h" * size))
            c.parts.append(f"a {size}-byte header")
        elif how == 1:
            headers += [(f"X-H{i}", "v") for i in range(size // 100)]
            c.parts.append(f"{size // 100} extra headers")
        else:
            c.path += "?q=" + "p" * size
            c.parts.append(f"a {size}-byte query string")
    elif variant == 7:
        p = c.path
        line, c.reject = r.choice([
            (f"POST {p} HTTP/1.1", True), (f"GET {p} HTTP/2.0", True), (f"GET {p} HTTP/0.9", True),
            (f"GET {p}", True), (f"get {p} HTTP/1.1", True), (f"CONNECT {p} HTTP/1.1", True),
            (f"GET  {p} HTTP/1.1", False), (f"GET http://127.0.0.1{p} HTTP/1.1", False),
            (f"GET {p} HTTP/1.1 x", False), ("GET * HTTP/1.1", False), (f"GET {p}\x00 HTTP/1.1", False),
            ("\x16\x03\x01\x02\x00", False), (f"\r\nGET {p} HTTP/1.1", False),
        ])  # fmt: skip
        c.parts.append(f"request line {line!r}")
    elif variant == 8:
        whole = request(c.path, headers)
        cut, c.after_request = r.randint(1, len(whole) - 3), r.choice(["shut", "shut", "drop"])
        c.request = whole[:cut]
        c.parts.append(f"handshake cut after {cut} of {len(whole)} B")
        c.parts.append("then " + c.after_request.replace("shut", "FIN").replace("drop", "reset"))
    elif variant == 9:
        valid, plain = request(c.path, headers), f"GET {c.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        how = r.randrange(3)
        c.request = [valid + plain, valid + valid, plain + valid][how]
        c.parts.append(("a handshake and a plain GET", "two handshakes", "a plain GET and a handshake")[how])
        c.parts.append("in one write")
        c.intact, c.key = how == 2, c.key if how < 2 else None
    elif variant == 10:
        name = r.choice([*HOSTILE_GROUPS, "".join(chr(r.randint(1, 0x2FF)) for _ in range(r.randint(1, 20)))])
        query = r.choice(["group", "after"]) + "=" + urllib.parse.quote(name, safe="")
        if r.random() < 0.3:
            query = "&".join(f"group=g{i}" for i in range(r.randint(20, 60)))
        c.path += "?" + query
        c.parts.append(f"query {query[:80]!r}")
        c.patience = 1.0
    else:
        data, changes = bytearray(request(c.path, headers)), []
        for _ in range(r.randint(1, 4)):
            at, how = r.randrange(len(data)), r.randrange(4)
            before = bytes(data[max(0, at - 6) : at + 6])
            if how == 0:
                data[at] ^= 1 << r.randrange(8)
            elif how == 1:
                data.insert(at, r.randrange(256))
            elif how == 2:
                del data[at : at + r.randint(1, 8)]
            else:
                data[at : at + 4] = data[at : at + 4].swapcase()
            after = bytes(data[max(0, at - 6) : at + 6])
            changes.append(f"{('flip', 'insert', 'delete', 'case')[how]} at {at} ({before!r} -> {after!r})")
        c.request, c.key = bytes(data), None
        c.parts.append("handshake mutated: " + ", ".join(changes))
    if c.request is None:
        c.request = request(c.path, headers, line=line)
