"""permessage-deflate (project/daphne_deflate.py) against live Daphnes: what the `websockets` client,
Chromium and a raw socket negotiate and get, the deflate bomb, and Autobahn cases 12 and 13."""

import asyncio
import functools
import json
import logging
import re
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from bench.frames import (
    CLOSE,
    CONTINUATION,
    TEXT,
    Frame,
    RawClient,
    close_code,
    frame,
    handshake_headers,
    next_frame,
    parse_response,
    request,
)
from tests.conftest import serving
from tests.servers import ROOT, DaphneServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LIMIT = 1024 * 1024  # WEBSOCKET_MAX_MESSAGE_SIZE of the servers here (the default)
PREFIX = "Server: Hello. You said: "
CHAT = (
    "Type and press Enter: the message shows as sent, the reply as received, each line with its time; "
    "broadcasts show highlighted, with sender, group and time."
)


@pytest.fixture(scope="module")
def deflating(daphne_env: dict[str, str]) -> Iterator[DaphneServer]:
    """A Daphne with WEBSOCKET_COMPRESSION=on, every message compressed, and no rate limit: an Autobahn
    case sends 1,000 messages, and kosoku fails on an uncompressed reply in a compressed session
    ("Strings must be encoded before hashing", its own error: RFC 7692 allows them)."""
    settings = {"WEBSOCKET_COMPRESSION": "on", "WEBSOCKET_COMPRESSION_MIN_SIZE": "0", "WEBSOCKET_RATE": "0"}
    yield from serving(DaphneServer(env={**daphne_env, **settings}))


@pytest.fixture(scope="module")
def deflating_each_message(daphne_env: dict[str, str]) -> Iterator[DaphneServer]:
    """A Daphne with WEBSOCKET_COMPRESSION=no-context-takeover and a minimum size of 64 bytes."""
    settings = {"WEBSOCKET_COMPRESSION": "no-context-takeover", "WEBSOCKET_COMPRESSION_MIN_SIZE": "64"}
    yield from serving(DaphneServer(env={**daphne_env, **settings}))


class DeflateClient:
    """A raw socket that offers permessage-deflate and compresses by hand, to see the frames themselves."""

    def __init__(self, server: DaphneServer, path: str = "/ws/raw/", offer: str | None = None) -> None:
        self.raw = RawClient(server.port, timeout=10)
        headers = handshake_headers()
        offer = "permessage-deflate; client_max_window_bits" if offer is None else offer
        if offer:
            headers.append(("Sec-WebSocket-Extensions", offer))
        self.raw.send(request(path, headers), time.monotonic() + 10)
        while b"\r\n\r\n" not in self.raw.inbox:
            assert self.raw.wait(10) or b"\r\n\r\n" in self.raw.inbox, "no handshake response"
        head, _, rest = bytes(self.raw.inbox).partition(b"\r\n\r\n")
        self.raw.inbox[:] = rest
        self.response = parse_response(head)
        assert self.response.status == 101, self.response.line
        self.extensions = ", ".join(self.response.headers.get("sec-websocket-extensions", []))
        self.inflater = zlib.decompressobj(-15)

    def send(self, data: bytes) -> None:
        assert self.raw.send(data, time.monotonic() + 10)

    def send_compressed(self, text: bytes, *, pieces: int = 1) -> None:
        """Send ``text`` as one compressed message, in ``pieces`` frames."""
        data = deflated(text)
        size = -(-len(data) // pieces)
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        for number, chunk in enumerate(chunks):
            opcode, rsv = (TEXT, 4) if number == 0 else (CONTINUATION, 0)
            self.send(frame(opcode, chunk, fin=number == len(chunks) - 1, rsv=rsv))

    def next(self, timeout: float = 10) -> Frame:
        deadline = time.monotonic() + timeout
        while (item := next_frame(self.raw.inbox)) is None:
            assert time.monotonic() < deadline and not self.raw.ended, "no frame from the server"
            self.raw.wait(0.2)
        return item

    def inflate(self, item: Frame) -> bytes:
        """The payload of a one-frame message, inflated if it came compressed (the server's context)."""
        if not item.rsv & 4:
            return item.payload
        return self.inflater.decompress(item.payload + b"\x00\x00\xff\xff")

    def close(self) -> None:
        self.raw.close()


async def websockets_client(url: str, **options):
    return await websockets.connect(url, ping_interval=None, open_timeout=10, **options)


async def test_websockets_client_negotiates_deflate_and_echo_and_broadcast_work(deflating):
    async with await websockets_client(f"{deflating.ws_url}/ws/", subprotocols=["echo.json"]) as ws:
        header = ws.response.headers.get("Sec-WebSocket-Extensions")
        assert header == "permessage-deflate; client_max_window_bits=12"
        (extension,) = ws.protocol.extensions
        assert extension.name == "permessage-deflate"
        welcome = json.loads(await ws.recv())
        assert welcome["type"] == "welcome"
        await ws.send(json.dumps({"type": "echo", "text": CHAT}))
        assert json.loads(await ws.recv()) == {"type": "echo", "text": PREFIX + CHAT}
        command = [sys.executable, "manage.py", "broadcast", CHAT]
        sent = await asyncio.to_thread(
            subprocess.run, command, cwd=ROOT, env=deflating.env, capture_output=True, text=True, timeout=60
        )
        assert sent.returncode == 0, sent.stderr
        while (message := json.loads(await asyncio.wait_for(ws.recv(), 10)))["type"] != "broadcast":
            assert message["type"] == "presence", message
        assert message["text"] == CHAT
    async with await websockets_client(f"{deflating.ws_url}/ws/") as ws:
        assert ws.protocol.extensions
        await ws.send(CHAT)
        assert await ws.recv() == PREFIX + CHAT


def test_the_server_compresses_with_context_takeover_when_on(deflating):
    client = DeflateClient(deflating)
    try:
        assert client.extensions == "permessage-deflate; client_max_window_bits=12"
        client.send(frame(TEXT, CHAT.encode()))  # uncompressed from the client: allowed
        first = client.next()
        client.send_compressed(CHAT.encode())
        second = client.next()
        assert first.rsv == second.rsv == 4, "the server's messages come compressed"
        assert client.inflate(first) == client.inflate(second) == CHAT.encode()
        assert len(first.payload) < len(CHAT) * 0.8
        assert len(second.payload) < 16, "the repeat is a back-reference into the kept context"
    finally:
        client.close()


def test_no_context_takeover_compresses_each_message_alone_and_leaves_small_ones(deflating_each_message):
    client = DeflateClient(deflating_each_message)
    try:
        assert client.extensions == (
            "permessage-deflate; client_no_context_takeover; client_max_window_bits=12"
        )
        for _ in range(2):
            client.send_compressed(CHAT.encode())
        first, second = client.next(), client.next()
        assert first.rsv == second.rsv == 4
        assert first.payload == second.payload, "no context kept: the same message, the same bytes"
        assert zlib.decompressobj(-15).decompress(second.payload + b"\x00\x00\xff\xff") == CHAT.encode()
        client.send(frame(TEXT, b"short"))  # under WEBSOCKET_COMPRESSION_MIN_SIZE
        short = client.next()
        assert (short.rsv, short.payload) == (0, b"short")
    finally:
        client.close()


def test_a_valued_client_window_hint_is_respected(deflating):
    """autobahn drops the value of client_max_window_bits=N; the answer must not ask for more."""
    client = DeflateClient(deflating, offer="permessage-deflate; client_max_window_bits=10")
    try:
        assert client.extensions == "permessage-deflate; client_max_window_bits=10"
    finally:
        client.close()
    client = DeflateClient(deflating, offer="permessage-deflate")  # as Firefox and Safari offer it
    try:
        assert client.extensions == "permessage-deflate"
        client.send_compressed(CHAT.encode())
        assert client.inflate(client.next()) == CHAT.encode()
    finally:
        client.close()


async def test_compression_off_negotiates_nothing(start_daphne):
    server = start_daphne(WEBSOCKET_COMPRESSION="off")
    async with await websockets_client(f"{server.ws_url}/ws/") as ws:
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
        assert ws.protocol.extensions == []
        await ws.send(CHAT)
        assert await ws.recv() == PREFIX + CHAT
    client = DeflateClient(server)
    try:
        assert client.extensions == ""
        client.send_compressed(b"hello")  # RSV1 without the extension: a protocol error
        closing = client.next()
        assert (closing.opcode, close_code(closing)) == (CLOSE, 1002)
    finally:
        client.close()


def test_a_bad_compression_setting_is_one_line_and_exit_2(daphne_env):
    env = {**daphne_env, "WEBSOCKET_COMPRESSION": "gzip"}
    command = [sys.executable, "manage.py", "check"]
    run = subprocess.run(command, cwd=ROOT, env={**env}, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.strip() == "WEBSOCKET_COMPRESSION must be off, on or no-context-takeover, not 'gzip'."


@functools.cache
def deflated(text: bytes) -> bytes:
    """``text`` as a permessage-deflate payload (the 4-byte tail of the sync flush taken off)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -9)
    return (compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


@pytest.mark.parametrize(
    ("inflated", "pieces"),
    [(16 * LIMIT, 1), (4 * LIMIT, 16)],
    ids=["16 MiB in one frame", "4 MiB in 16 fragments of 256 KiB each"],
)
def test_a_deflate_bomb_gets_1009_and_memory_stays_flat(start_daphne, inflated, pieces):
    """About 16 KB (or 4 KB) on the wire, far over WEBSOCKET_MAX_MESSAGE_SIZE once inflated: the
    fragments each stay under the limit, their sum does not."""
    server = start_daphne(WEBSOCKET_COMPRESSION="on")

    def bomb() -> None:
        client = DeflateClient(server)
        try:
            assert "permessage-deflate" in client.extensions
            client.send_compressed(b"a" * inflated, pieces=pieces)
            closing = client.next()
            assert (closing.opcode, close_code(closing)) == (CLOSE, 1009), closing
        finally:
            client.close()

    bomb()  # first use: buffers and code paths the next ones reuse
    before = server.rss()
    for _ in range(10):
        bomb()
    grown = server.rss() - before
    assert grown < 8 * LIMIT, f"RSS grew by {grown / LIMIT:.1f} MiB for 10 bombs"
    client = DeflateClient(server)  # and the server goes on serving
    try:
        client.send_compressed(CHAT.encode())
        assert client.inflate(client.next()) == CHAT.encode()
    finally:
        client.close()


# What Autobahn cases 12 and 13 vary: window bits, context takeover on either side, fragments.
PARAMETERS = [
    {},
    {"server_no_context_takeover": True},
    {"client_no_context_takeover": True},
    {"server_no_context_takeover": True, "client_no_context_takeover": True},
    {"server_max_window_bits": 9},
    {"server_max_window_bits": 15, "client_max_window_bits": 15},
    {"server_max_window_bits": 10, "client_max_window_bits": 9, "client_no_context_takeover": True},
    {"client_max_window_bits": None},
]


@pytest.mark.parametrize("parameters", PARAMETERS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
async def test_messages_of_every_size_and_fragmenting_echo_at_several_parameters(deflating, parameters):
    options = {"client_max_window_bits": True, **parameters}
    factory = ClientPerMessageDeflateFactory(**options)
    async with await websockets_client(
        f"{deflating.ws_url}/ws/raw/", extensions=[factory], compression=None, max_size=None
    ) as ws:
        (extension,) = ws.protocol.extensions
        if parameters.get("server_max_window_bits"):
            assert extension.remote_max_window_bits == parameters["server_max_window_bits"]
        if parameters.get("server_no_context_takeover"):
            assert extension.remote_no_context_takeover
        text = (CHAT * 600).encode()  # 78 KB of prose, and binary noise
        noise = bytes(range(256)) * 300
        for payload in (b"", b"x", text[:300], text, noise):
            for repeat in range(2):  # the second finds the first in a kept context
                await ws.send(payload)
                assert await ws.recv() == payload, (len(payload), repeat)
                await ws.send(payload.decode("latin-1"))
                assert await ws.recv() == payload.decode("latin-1")
            fragments = [payload[i : i + 4096] for i in range(0, len(payload), 4096)] or [b""]
            await ws.send(fragments)
            assert await ws.recv() == payload


def test_autobahn_compression_cases_12_and_13(deflating, tmp_path):
    """The suite's permessage-deflate cases on each data set (12) and parameter set (13: window bits,
    context takeover on either side), 16-byte messages and 8 KB ones in 256-byte fragments; 1,000
    messages a case. The whole of 12 and 13 takes over 15 minutes here; see the README."""
    kosoku = shutil.which("kosoku", path=str(Path(sys.executable).parent))
    cases = [f"12.{data}.{size}" for data in range(1, 6) for size in (1, 11)]
    cases += [f"13.{parameters}.{size}" for parameters in range(1, 8) for size in (1, 11)]
    command = [kosoku, f"{deflating.ws_url}/ws/raw/", "-o", str(tmp_path)]
    for case in cases:
        command += ["-i", case]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    results = [json.loads(path.read_text()) for path in tmp_path.glob("*_case_*.json")]
    assert sorted(r["id"] for r in results) == sorted(cases)
    assert not [(r["id"], r["behavior"], r["behaviorClose"]) for r in results if r["behavior"] != "OK"]
    assert not [r["id"] for r in results if r["behaviorClose"] != "OK"]


@pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Chromium is not installed (apt-get install chromium)"
)
@pytest.mark.parametrize("mode", ["on", "off"])
def test_chromium_negotiates_deflate_and_the_chat_page_works(start_daphne, mode):
    from playwright.sync_api import expect, sync_playwright

    server = start_daphne(WEBSOCKET_COMPRESSION=mode)
    requests: list[dict] = []
    handshakes: list[dict] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
        )
        try:
            page = browser.new_page()
            cdp = page.context.new_cdp_session(page)
            cdp.send("Network.enable")
            cdp.on("Network.webSocketWillSendHandshakeRequest", lambda event: requests.append(event))
            cdp.on("Network.webSocketHandshakeResponseReceived", lambda event: handshakes.append(event))
            page.goto(server.http_url + "/")
            expect(page.locator("#status")).to_contain_text("Connected", timeout=10_000)
            page.fill("#message", CHAT)
            page.press("#message", "Enter")
            page.locator("#log li .text", has_text=PREFIX + CHAT).last.wait_for(timeout=10_000)
        finally:
            browser.close()
    assert requests and handshakes, "Chromium reported no WebSocket handshake"
    offered = {k.lower(): v for k, v in requests[0]["request"]["headers"].items()}
    assert offered["sec-websocket-extensions"] == "permessage-deflate; client_max_window_bits"
    headers = handshakes[0]["response"]["headers"]
    answered = {k.lower(): v for k, v in headers.items()}.get("sec-websocket-extensions")
    if mode == "on":
        assert answered == "permessage-deflate; client_max_window_bits=12"
    else:
        assert answered is None


def test_compression_is_written_for_the_pinned_daphne_and_autobahn():
    from project import daphne_deflate

    requirements = (ROOT / "requirements.txt").read_text()
    for name, written_for in (
        ("daphne", daphne_deflate.DAPHNE_WRITTEN_FOR),
        ("autobahn", daphne_deflate.AUTOBAHN_WRITTEN_FOR),
    ):
        assert re.search(rf"(?m)^{name}==(\S+)$", requirements).group(1) == written_for


def test_other_daphne_or_autobahn_versions_get_no_compression(monkeypatch, caplog):
    from project import daphne_deflate

    monkeypatch.setattr(daphne_deflate, "_applied", False)
    monkeypatch.setattr(daphne_deflate.autobahn, "__version__", "26.11.0")
    with caplog.at_level(logging.WARNING, logger="project.daphne_deflate"):
        assert daphne_deflate.apply(mode="on", min_size=0, max_message_size=LIMIT) is False
    assert "found 4.2.3 and 26.11.0: compression stays off" in caplog.text
    assert daphne_deflate.apply(mode="off", min_size=0, max_message_size=LIMIT) is False
    with pytest.raises(ValueError, match="WEBSOCKET_COMPRESSION"):
        daphne_deflate.apply(mode="gzip", min_size=0, max_message_size=LIMIT)
