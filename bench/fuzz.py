"""Fuzz the project's WebSockets: mutated frames and handshakes over raw sockets, and echo.json envelopes.

    .venv/bin/python -m bench.fuzz [--seed N ...] [--seconds 60] [--cases N] [--case K | --from K]

Starts a private redis-server and two Daphne processes serving the project on 127.0.0.1 (one with no
rate limit, WEBSOCKET_RATE=0, so that limits do not mask everything; one with the default rate limit for
a few cases), with WEBSOCKET_MAX_MESSAGE_SIZE=65536 so that cases at the size limit stay cheap, and stops
them by process id at the end. Each case is a pure function of (seed, case number): ``--seed S --case K``
replays one. A case opens its own connection, sends what it was made of, reads the server's answer
(frames split over TCP segments and after data frames included) and closes. Families (the first two are
made in bench/frames.py):

- frames: reserved opcodes, RSV bits, unmasked frames, declared lengths longer or shorter than sent,
  non-minimal and 64-bit lengths, bad continuation order, long or fragmented control frames, close frames
  of 0, 1, 2+ bytes with forbidden and allowed codes, invalid UTF-8 in text and close reasons, a bad frame
  and a close in one write, ping floods (read, and rarely 12 MB unread), messages at and just over the
  size limit, truncated frames then FIN or reset, random bytes and bit flips, sometimes in split writes;
- handshake: HTTP/1.0, missing, duplicate or garbage Sec-WebSocket-Key, wrong version, missing Upgrade,
  odd and hostile Origins, Host: evil.com, huge headers, bad request lines, bytes cut mid-header,
  pipelined requests, hostile ?group= and ?after=, random byte mutations of a valid handshake;
- json: echo.json envelopes drawn by hypothesis (see below);
- ratelimit: bursts against the Daphne with the default rate limit.

Hypothesis runs outside pytest, seeded and bounded: the envelopes of cases 64k to 64k+63 of seed S are
the 64 examples that one ``@given`` run makes with ``@seed(hash of S and k)``, ``max_examples=64``,
``phases=[Phase.generate]`` and no database. That run only collects examples and never fails, so it
is deterministic: a replay of one case regenerates its chunk (0.3 s) and takes the same example. (One
@given run driving the live cases would make replaying a single case mean replaying all before it.)

Properties, checked after every case (named in the output):
  protocol  the server answered with a close frame whose code a server may send (1000-1003, 1007-1011,
            1013, 3000-4999) or kept the connection open (the case then closes it and wants the answer to
            its close frame); never a bare FIN or reset before the client ended its side; well-formed
            server frames; a handshake refused with an HTTP status (not 5xx but 503), and never 101 to a
            request that RFC 6455 says to refuse (HTTP/1.0, bad key or version, hostile Origin, ...);
  log       no "Traceback" and no " ERROR " line in Daphne's log since the case started (a line that names
            an earlier case's connection, conn=ID, is charged to that case, once);
  memory    Daphne's RSS stays under its baseline + --rss-limit-mib; a client that stopped reading during
            a ping flood was not queued more than the outbound limit plus the kernel's socket buffers;
and every --check-every cases and at the end:
  echo      a fresh, well-behaved client (the websockets library) gets its echo on /ws/;
and every --cleanup-every cases and at the end, once every connection is closed and two presence
intervals have passed:
  cleanup   the presence rows (echo_connection), the echo_connections_open gauge of /metrics and Redis's
            PUBSUB NUMPAT and PUBSUB CHANNELS are back to their baseline from before the first case
            (the failure lists the cases whose consumer never logged its end: the likely leaks).

Prints the seeds, a table of outcomes per family, and each failure with a replay command; exits 1 if any
property failed.
"""

import argparse
import hashlib
import json
import random
import re
import sqlite3
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from bench.environment import project_env, raise_file_limit
from bench.frames import (
    BINARY,
    CLOSE,
    CONTINUATION,
    DEFAULT_KEY,
    HOSTILE_GROUPS,
    LIMIT,
    NAMES,
    PATHS,
    PONG,
    PREFIX,
    TEXT,
    BadServerFrame,
    Case,
    RawClient,
    accept_for,
    check_server_frame,
    close_code,
    close_payload,
    frame,
    frames_case,
    handshake_case,
    handshake_headers,
    mask,
    next_frame,
    parse_response,
    request,
    server_may_send,
)
from tests.servers import DaphneServer, RedisServer

OUTBOUND_LIMIT = 262144  # WEBSOCKET_OUTBOUND_LIMIT (the default)
PRESENCE_INTERVAL = 0.5
SETTINGS = {"METRICS_PUBLIC": "1", "LOG_LEVEL": "INFO", "PRESENCE_INTERVAL": str(PRESENCE_INTERVAL)}
SETTINGS |= {"WEBSOCKET_RATE": "0", "WEBSOCKET_MAX_MESSAGE_SIZE": str(LIMIT)}
SETTINGS |= {"DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost"}
RATE_LIMITED = {"WEBSOCKET_RATE": "20", "WEBSOCKET_BURST": "60"}  # the defaults
CASE_SECONDS = 40  # the longest a case may take, its 12 MiB flood included
CHUNK = 64  # hypothesis examples per @given run
FAMILIES = [("frames", 50), ("handshake", 22), ("json", 25), ("ratelimit", 3)]
OFFENDING = re.compile(r"Traceback|\sERROR\s")
RECORD = re.compile(r"\d{4}-\d\d-\d\d |\d+\.\d+\.\d+\.\d+:\d+ - - ")  # a log record's first line
PEER = re.compile(r"conn=(\w+) peer=127\.0\.0\.1:(\d+)")  # the consumers' log lines name both


# --- echo.json envelopes, rate limits, and the choice of a case ----------------------------------


def containers(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)


def envelopes() -> st.SearchStrategy:
    """echo.json client frames, as (what kind, JSON text)."""
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
    values = st.recursive(scalars, containers, max_leaves=25)
    kinds = st.sampled_from(["echo", "join", "leave"])

    def dumps(label: str):
        return lambda value: (label, json.dumps(value, ensure_ascii=False))

    def deep(args) -> tuple[str, str]:
        depth, (opener, closer), where = args
        nest = opener * depth + "1" + closer * depth
        envelope = {"whole": nest, "text": f'{{"type":"echo","text":{nest}}}'}
        return f"{depth} nested levels in {where}", envelope.get(
            where, f'{{"type":"echo","text":"hi","x":{nest}}}'
        )

    def placed(label: str):
        def make(args) -> tuple[str, str]:
            raw, where, kind = args
            field = "text" if kind == "echo" else "group"
            return f"{label} in {where}", {
                "value": f'{{"type":"{kind}","{field}":{raw}}}',
                "type": f'{{"type":{raw},"text":"x"}}',
                "key": f'{{"type":"echo","text":"x",{raw}:1}}'
                if raw.startswith('"')
                else f'{{"type":"echo","n":{raw}}}',
            }.get(where, raw)

        return make

    surrogates = st.sampled_from(
        ['"\\ud800"', '"\\udfff"', '"a\\ud800b"', '"\\udc00\\ud800"', '"\\ud83d\\ude00"']
    )
    numbers = st.sampled_from(["1e999999", "-1e999999", "1e-999999", "-0"])
    numbers |= st.integers(4000, 6000).map(lambda n: "7" * n) | st.integers(4000, 6000).map(
        lambda n: "1." + "3" * n
    )
    where = st.sampled_from(["value", "type", "key", "whole"])
    depths = st.sampled_from([500, 999, 1000, 1001, 1500, 2000, 2500]) | st.integers(100, 2500)
    nested = st.tuples(
        depths, st.sampled_from([("[", "]"), ('{"a":', "}")]), st.sampled_from(["whole", "text", "x"])
    )
    reply_overhead = len(json.dumps({"type": "echo", "text": PREFIX}))
    over_limit = st.integers(LIMIT - reply_overhead + 1, LIMIT - len('{"type":"echo","text":""}'))
    optional = {"type": values | kinds, "text": values, "group": values}
    extra = st.tuples(
        kinds, st.text(max_size=50), st.dictionaries(st.text(max_size=8), values, min_size=1, max_size=4)
    )
    names = st.tuples(
        st.sampled_from(["join", "leave"]), st.sampled_from(HOSTILE_GROUPS) | st.text(max_size=100)
    )
    return st.one_of(
        values.map(dumps("any JSON")),
        st.fixed_dictionaries({}, optional=optional).map(dumps("wrong types")),
        extra.map(
            lambda a: dumps("extra keys")({**a[2], "type": a[0], "text" if a[0] == "echo" else "group": a[1]})
        ),
        names.map(lambda a: dumps("group name")({"type": a[0], "group": a[1]})),
        st.text().map(lambda t: dumps("echo")({"type": "echo", "text": t})),
        *[nested.map(deep)] * 2,
        *[st.tuples(surrogates, where, kinds).map(placed("lone surrogate"))] * 2,
        st.tuples(numbers, where, kinds).map(placed("huge number")),
        *[over_limit.map(lambda n: ("echo just over the limit", '{"type":"echo","text":"' + "x" * n + '"}'))]
        * 2,
    )


_corpus: dict[tuple[int, int], list[tuple[str, str]]] = {}


def json_corpus(fuzz_seed: int, chunk: int) -> list[tuple[str, str]]:
    """The examples of one seeded, bounded hypothesis run (see the module docstring)."""
    if (fuzz_seed, chunk) not in _corpus:
        examples: list[tuple[str, str]] = []
        run_seed = int(hashlib.sha256(f"{fuzz_seed}:json:{chunk}".encode()).hexdigest()[:16], 16)
        bounds = settings(max_examples=CHUNK, deadline=None, database=None, derandomize=False)

        @seed(run_seed)
        @settings(bounds, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(envelopes())
        def collect(example: tuple[str, str]) -> None:
            examples.append(example)

        collect()
        _corpus[(fuzz_seed, chunk)] = examples
    return _corpus[(fuzz_seed, chunk)]


def fragmented(op: int, data: bytes, count: int, r: random.Random) -> bytes:
    """One message of ``data`` in ``count`` frames, cut anywhere (a character too: still valid)."""
    cuts = sorted(r.sample(range(1, len(data)), count - 1))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return b"".join(
        frame(op if not i else CONTINUATION, p, fin=i == count - 1, mask=mask(r))
        for i, p in enumerate(pieces)
    )


def json_case(c: Case, r: random.Random) -> None:
    c.path, c.subprotocol, c.replies, c.patience = "/ws/", "echo.json", 1, 3.0
    examples = json_corpus(c.seed, c.number // CHUNK)
    label, text = examples[c.number % CHUNK % len(examples)]
    data, count = text.encode(), 1 if r.random() < 0.8 or len(text) < 3 else r.randint(2, 3)
    shown = text if len(text) <= 90 else f"{text[:60]}…{text[-20:]} ({len(data)} B)"
    c.add(
        fragmented(TEXT, data, count, r),
        f"{label}{f', in {count} fragments' if count > 1 else ''}: {shown!r}",
    )


def ratelimit_case(c: Case, r: random.Random) -> None:
    c.server, (c.path, c.subprotocol) = "limited", r.choice(PATHS)
    n = r.choice([r.randint(5, 40), r.randint(61, 300)])
    body = b'{"type":"echo","text":"r"}' if c.subprotocol else b"r"
    c.add(
        b"".join(frame(TEXT, body, mask=mask(r)) for _ in range(n)),
        f"{n} messages in one write (rate 20/s, burst 60)",
    )
    c.replies, c.patience = (n, 1.0) if n <= 40 else (0, 3.0)


def make_case(fuzz_seed: int, number: int) -> Case:
    """Case ``number`` of ``fuzz_seed``: the same on every run."""
    r = random.Random(f"{fuzz_seed}:{number}")
    c = Case(seed=fuzz_seed, number=number)
    names, weights = zip(*FAMILIES, strict=True)
    c.family = r.choices(names, weights)[0]
    {"frames": frames_case, "handshake": handshake_case, "json": json_case, "ratelimit": ratelimit_case}[
        c.family
    ](c, r)
    return c


# --- Running a case ----------------------------------------------------------------------------


@dataclass
class Result:
    case: Case
    outcome: str = ""
    upgraded: bool = False
    local_port: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (property, what went wrong)
    notes: list[str] = field(default_factory=list)

    def fail(self, prop: str, detail: str) -> None:
        self.failures.append((prop, detail))


class Reader:
    """The server's frames on one connection, checked as they arrive, in whatever TCP segments."""

    def __init__(self, client: RawClient) -> None:
        self.client, self.close = client, None  # the server's close frame, once it came
        self.message: list[bytes] | None = None
        self.message_op = 0
        self.answers = 0  # data messages, but for echo.json's welcome and presence updates
        self.pong_bytes = 0
        self.news = 0  # frames other than presence updates

    def parse(self) -> None:
        while (item := next_frame(self.client.inbox)) is not None:
            check_server_frame(item)
            if self.close is not None:
                raise BadServerFrame(f"a {NAMES[item.opcode]} frame after its close frame")
            if item.opcode in (TEXT, BINARY, CONTINUATION):
                self.data(item)
                continue
            if item.opcode == CLOSE:
                self.close = item
            self.pong_bytes += len(item.payload) + 2 if item.opcode == PONG else 0
            self.news += 1

    def data(self, item) -> None:
        if (item.opcode == CONTINUATION) != (self.message is not None):
            raise BadServerFrame("a continuation frame out of order")
        self.message = [*(self.message or []), item.payload]
        self.message_op = self.message_op if item.opcode == CONTINUATION else item.opcode
        if not item.fin:
            return
        payload, self.message = b"".join(self.message), None
        if self.message_op == TEXT:
            try:
                text = payload.decode()
            except UnicodeDecodeError:
                raise BadServerFrame(f"a text message that is not UTF-8: {payload[:40]!r}") from None
            if envelope_type(text) in ("welcome", "presence"):
                return  # not an answer to anything the case sent
        self.answers += 1
        self.news += 1


def envelope_type(text: str) -> object:
    try:
        return json.loads(text).get("type") if text.startswith("{") else None
    except (ValueError, AttributeError, RecursionError):
        return None


def run_case(c: Case, server: DaphneServer) -> Result:
    """Make one connection, send the case, read and judge the server's answer (property ``protocol``)."""
    result = Result(c)
    client = RawClient(server.port, receive_buffer=4096 if c.unread else None)
    result.local_port = client.port
    try:
        handshake(c, client, server, result)
    except BadServerFrame as error:
        result.outcome = result.outcome or "bad frame"
        result.fail("protocol", f"the server sent {error}")
    finally:
        client.close()
    return result


def handshake(c: Case, client: RawClient, server: DaphneServer, result: Result) -> None:
    deadline = time.monotonic() + CASE_SECONDS
    if c.request is None:
        c.key = c.key or DEFAULT_KEY
        c.request = request(c.path, handshake_headers(c.subprotocol, c.key))
    client.send(c.request, deadline)
    if c.after_request == "drop":
        result.outcome = "client reset"
        client.close(reset=True)
        return
    if c.after_request == "shut":
        client.shutdown_write()
    end = min(deadline, time.monotonic() + 2)
    while b"\r\n\r\n" not in client.inbox and not client.ended and time.monotonic() < end:
        client.wait(0.1)
    if b"\r\n\r\n" not in client.inbox:
        result.outcome = f"{'partial' if client.inbox else 'no'} response ({client.ended or 'still open'})"
        result.notes += [f"got {bytes(client.inbox[:80])!r}"] if client.inbox else []
        return
    head, _, rest = bytes(client.inbox).partition(b"\r\n\r\n")
    client.inbox[:] = rest
    response = parse_response(head)
    if response.status != 101:
        result.outcome = f"http {response.status}"
        if response.status is None:
            result.fail("protocol", f"an answer that is not an HTTP status line: {response.line[:80]!r}")
        elif response.status >= 500 and response.status != 503:
            result.fail("protocol", f"{response.line!r}: a server error")
        elif c.family != "handshake":
            result.fail("protocol", f"a valid handshake refused: {response.line!r}")
        return
    result.upgraded = True
    if c.reject:
        result.fail("protocol", "101 Switching Protocols to a handshake that RFC 6455 says to refuse")
    if c.key and response.headers.get("sec-websocket-accept") != [accept_for(c.key)]:
        result.fail(
            "protocol", f"a wrong Sec-WebSocket-Accept: {response.headers.get('sec-websocket-accept')}"
        )
    converse(c, client, server, result, deadline)


def converse(c: Case, client: RawClient, server: DaphneServer, result: Result, deadline: float) -> None:
    """Send the frames, wait for the server's reaction, and finish the closing handshake if we can."""
    reader = Reader(client)
    rss_before = peak = server.rss() if c.unread else 0
    for item in c.sends:
        if item == "shut":
            client.shutdown_write()
        elif item == "drop":
            reader.parse()
            result.outcome = "client reset"
            client.close(reset=True)
            return
        elif isinstance(item, float):
            client.wait(item)
        elif client.sent_all:
            client.send(item, deadline, read=not c.unread)
        if not c.unread:
            reader.parse()
    # Until the server closes, or answers all, or says nothing for c.patience seconds.
    quiet_until, seen = time.monotonic() + c.patience, reader.news
    while reader.close is None and not client.ended and time.monotonic() < min(quiet_until, deadline):
        if c.replies and reader.answers >= c.replies:
            break
        client.wait(0.05)
        reader.parse()
        if reader.news != seen:
            seen, quiet_until = reader.news, time.monotonic() + c.patience
        peak = max(peak, server.rss()) if c.unread else 0
    if c.unread:
        queued, rss = reader.pong_bytes / 2**20, (peak - rss_before) / 2**20
        result.notes.append(f"{queued:.1f} MiB of pongs came back, Daphne's RSS grew {rss:.0f} MiB")
        if reader.pong_bytes > OUTBOUND_LIMIT + socket_slack():
            bound = (OUTBOUND_LIMIT + socket_slack()) / 2**20
            why = f"over {bound:.1f} MiB: WEBSOCKET_OUTBOUND_LIMIT and the kernel's buffers"
            result.fail("memory", f"{queued:.1f} MiB of pongs queued for a client that did not read ({why})")
    can_close = c.intact and client.sent_all and not client.write_closed
    if reader.close is None and not client.ended:
        result.outcome = "kept open" + (", no answer" if reader.answers < c.replies else "")
        if can_close:
            if not c.closes:
                client.send(frame(CLOSE, close_payload(1000), mask=b"\x01\x02\x03\x04"), deadline)
            end = time.monotonic() + 5
            while reader.close is None and not client.ended and time.monotonic() < end:
                client.wait(0.1)
                reader.parse()
            if reader.close is None:
                how = f"the TCP connection ended ({client.ended})" if client.ended else "none within 5 s"
                result.fail("protocol", f"no close frame in answer to ours: {how}")
            else:
                check_close(reader.close, empty_ok=c.empty_close, result=result)
        return
    if reader.close is None:
        result.outcome = f"cut ({client.ended})" + (" after the client's FIN" if client.write_closed else "")
        if c.unread:
            result.notes.append("(its close frame may have been behind the unread data)")
        elif not client.write_closed:
            result.fail(
                "protocol", f"the server ended the TCP connection ({client.ended}) with no close frame"
            )
        return
    code = check_close(reader.close, empty_ok=c.empty_close, result=result)
    result.outcome = f"close {code}" if code is not None else "close (no code)"
    if can_close and not c.closes:  # answer it, as a client should, and let the server end the TCP connection
        client.send(frame(CLOSE, reader.close.payload[:2], mask=b"\x01\x02\x03\x04"), deadline)
        end = time.monotonic() + 2
        while not client.ended and time.monotonic() < end:
            client.wait(0.1)
            reader.parse()


def check_close(item, *, empty_ok: bool, result: Result) -> int | None:
    code = close_code(item)
    if code is None and not empty_ok:
        result.fail("protocol", "a close frame with no status code (1005)")
    elif code is not None and not server_may_send(code):
        result.fail("protocol", f"close code {code}, which a server may not send")
    return code


def socket_slack() -> int:
    """What the kernel may hold of a connection's data: the largest send buffer, and 2 MiB."""
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as sizes:
            return int(sizes.read().split()[2]) + 2 * 2**20
    except (OSError, ValueError, IndexError):
        return 6 * 2**20


# --- The other properties, and the run -----------------------------------------------------------


class LogWatch:
    """The part of a Daphne log not judged yet."""

    def __init__(self, server: DaphneServer) -> None:
        self.server, self.offset = server, 0

    def peek(self) -> str:
        with self.server.log_path.open("rb") as log:
            log.seek(self.offset)
            return log.read().decode(errors="replace")

    def take(self) -> str:
        """Return the complete lines not judged yet, and count them as judged."""
        text = self.peek()
        text = text[: text.rfind("\n") + 1]
        self.offset += len(text.encode(errors="replace"))
        return text


def offending(text: str) -> list[tuple[str | None, str]]:
    """Each log record of ``text`` with a Traceback or an ERROR: the connection it names, and an excerpt."""
    lines, records, i = [line.rstrip()[:200] for line in text.splitlines()], [], 0
    while i < len(lines):
        if not OFFENDING.search(lines[i]):
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if RECORD.match(lines[j])), len(lines))
        body = lines[i:end]  # the line and its traceback, up to the next record
        excerpt = lines[max(0, i - 1) : i] + body[:12] + (["…", body[-1]] if len(body) > 12 else [])
        peer = PEER.search(lines[i])
        records.append((peer.group(1) if peer else None, "\n".join(excerpt)))
        i = end
    return records


def probe(server: DaphneServer) -> str | None:
    """A well-behaved client's echo on /ws/: None if it came, else what went wrong."""
    text = f"probe {time.monotonic_ns()}"
    try:
        with connect(server.ws_url + "/ws/", open_timeout=10, close_timeout=5) as ws:
            ws.send(text)
            reply = ws.recv(timeout=10)
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None if reply == PREFIX + text else f"the echo was {reply!r}"


def gauge(server: DaphneServer) -> float:
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=10) as response:
        found = re.search(r"^echo_connections_open (\S+)$", response.read().decode(), re.MULTILINE)
    return float(found.group(1)) if found else float("nan")


@dataclass
class Failure:
    prop: str
    detail: str
    where: str
    what: str = ""
    replay: str = ""


@dataclass
class Report:
    seeds: list[int]
    results: list[Result] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    logs: list[str] = field(default_factory=list)

    def text(self) -> str:
        rate = len(self.results) / self.seconds if self.seconds else 0
        out = [f"seeds: {' '.join(map(str, self.seeds))}", f"Daphne logs: {' '.join(self.logs)}"]
        out += [f"{len(self.results)} cases in {self.seconds:.0f} s ({rate:.1f} a second)", ""]
        families = [name for name, _ in FAMILIES if any(r.case.family == name for r in self.results)]
        counts = Counter((r.outcome, r.case.family) for r in self.results)
        outcomes = sorted({outcome for outcome, _ in counts}, key=lambda o: (o.split()[0], o))
        width = max([len(o) for o in outcomes] + [7])
        out.append(f"{'outcome':<{width}}" + "".join(f"{f:>11}" for f in families))
        out += [f"{o:<{width}}" + "".join(f"{counts[o, f] or '':>11}" for f in families) for o in outcomes]
        by_property = Counter(f.prop for f in self.failures)
        out += ["", f"{len(self.failures)} failure(s)" + (f": {dict(by_property)}" if by_property else "")]
        for f in self.failures:
            out.append(f"- [{f.prop}] {f.where}: {f.detail}".replace("\n", "\n      "))
            out += [f"    sent: {f.what}"] if f.what else []
            out += [f"    replay: {f.replay}"] if f.replay else []
        return "\n".join(out)


@dataclass
class Options:
    seconds: float = 60
    cases: int = 100_000
    first: int = 0
    check_every: int = 10
    cleanup_every: int = 100
    rss_limit_mib: float = 200
    verbose: bool = False


class Fuzz:
    """The run: cases in turn against the servers, each judged, with checkpoints between them."""

    def __init__(
        self, report: Report, servers: dict[str, DaphneServer], env: dict, redis_url: str, options: Options
    ):
        self.report, self.servers, self.options = report, servers, options
        self.database = env["DATABASE_URL"].removeprefix("sqlite:///")
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=10)
        self.watches = {name: LogWatch(server) for name, server in servers.items()}
        self.rss_base = dict.fromkeys(servers, 0)
        self.rss_failed: set[str] = set()
        self.baseline: dict = {}
        self.unended: list[Result] = []  # cases whose consumer never logged its end: leak suspects
        self.by_conn: dict[
            str, Result
        ] = {}  # the case of each consumer (its conn=id), to charge log lines to
        self.log_charged: dict[int, set[int]] = {}  # seed: the cases already charged with a log line

    def fail(self, prop: str, detail: str, where: str, case: Case | None = None, replay: str = "") -> None:
        replay = replay or (case.replay if case else "")
        self.report.failures.append(Failure(prop, detail, where, case.what if case else "", replay))

    def snapshot(self) -> dict:
        db = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=10)
        try:
            rows = db.execute("SELECT COUNT(*) FROM echo_connection").fetchone()[0]
        finally:
            db.close()
        return {
            "presence rows": rows,
            "echo_connections_open": sum(gauge(server) for server in self.servers.values()),
            "PUBSUB NUMPAT": self.redis.pubsub_numpat(),
            "PUBSUB CHANNELS": sorted(name.decode(errors="replace") for name in self.redis.pubsub_channels()),
        }

    def start(self) -> None:
        """Warm the servers up with a probe each, then take the baselines."""
        for name, server in self.servers.items():
            if error := probe(server):
                self.fail("echo", f"{name} server, before the first case: {error}", "startup")
        time.sleep(2 * PRESENCE_INTERVAL)
        previous, self.baseline = None, self.snapshot()
        for _ in range(20):  # until two snapshots agree
            if self.baseline == previous:
                break
            time.sleep(0.5)
            previous, self.baseline = self.baseline, self.snapshot()
        for name, server in self.servers.items():
            self.rss_base[name] = server.rss()
            for _, excerpt in offending(self.watches[name].take())[:1]:
                self.fail("log", f"{name} server at startup:\n{excerpt}", "startup")

    def after_case(self, result: Result) -> None:
        """The properties log and memory, once the consumer (if any) has logged its end."""
        c, server, watch = result.case, self.servers[result.case.server], self.watches[result.case.server]
        if result.upgraded:  # an exception inside the consumer is logged within ~1 s, by Daphne's checker
            marker, end = f"peer=127.0.0.1:{result.local_port} closed code=", time.monotonic() + 3
            while marker not in (text := watch.peek()) and time.monotonic() < end:
                if OFFENDING.search(text):
                    time.sleep(0.3)
                    break
                time.sleep(0.02)
            text = watch.peek()
            if marker not in text:
                self.unended.append(result)
            for conn in re.findall(rf"conn=(\w+) peer=127\.0\.0\.1:{result.local_port} connected", text):
                self.by_conn[conn] = result
        self.judge_log(watch.take(), result)
        if server.process.poll() is not None:
            result.fail("echo", f"Daphne ({c.server}) exited with {server.process.returncode}")
            return
        rss, limit = server.rss(), self.options.rss_limit_mib
        if rss > self.rss_base[c.server] + limit * 2**20 and c.server not in self.rss_failed:
            self.rss_failed.add(c.server)
            result.fail("memory", f"Daphne's RSS is {rss / 2**20:.0f} MiB, over its baseline + {limit:g} MiB")

    def judge_log(self, text: str, result: Result | None) -> None:
        """Property log: charge each ERROR or Traceback to the case whose connection it names, if any,
        else to ``result``; a connection left open by an earlier case may log for ever: once is enough."""
        for conn, excerpt in offending(text):
            owner = self.by_conn.get(conn, result) or result
            if owner is None:
                self.fail("log", f"Daphne logged, after the last case:\n{excerpt}", "end")
            elif owner.case.number not in self.log_charged.get(owner.case.seed, set()):
                self.log_charged.setdefault(owner.case.seed, set()).add(owner.case.number)
                late = f" (while case {result.case.number} ran)" if owner is not result and result else ""
                if owner is result:
                    result.fail("log", f"Daphne logged:\n{excerpt}")
                else:
                    where = f"seed {owner.case.seed} case {owner.case.number} ({owner.case.family})"
                    self.fail("log", f"Daphne logged{late}:\n{excerpt}", where, owner.case)

    def checkpoint(self, where: str, cases: list[Case], cleanup: bool) -> None:
        """Property echo, and with ``cleanup`` the property cleanup, for the ``cases`` since the last."""
        replay = f"python -m bench.fuzz --seed {cases[0].seed} --from {cases[0].number} --cases {len(cases)}"
        for name, server in self.servers.items():
            if server.process.poll() is None and (error := probe(server)):
                self.fail("echo", f"{name} server: {error}", where, replay=replay)
        if not cleanup:
            return
        time.sleep(2 * PRESENCE_INTERVAL)
        end, state = time.monotonic() + 10, self.snapshot()
        while state != self.baseline and time.monotonic() < end:
            time.sleep(0.5)
            state = self.snapshot()
        if state != self.baseline:
            changed = "; ".join(
                f"{k}: {self.baseline[k]} -> {v}" for k, v in state.items() if v != self.baseline[k]
            )
            logs = {name: server.log() for name, server in self.servers.items()}
            suspects = [
                r for r in self.unended if f"127.0.0.1:{r.local_port} closed code=" not in logs[r.case.server]
            ]
            detail = f"not back to the baseline: {changed}" + "".join(
                f"\nits consumer never logged its end: {r.case.replay}  ({r.case.family}: {r.case.what[:80]})"
                for r in suspects[:10]
            )
            self.fail("cleanup", detail, where, replay=replay)
            self.baseline = state  # from now on, report only what changes again
        self.unended = []

    def go(self) -> None:
        options, started = self.options, time.monotonic()
        self.start()
        for fuzz_seed in self.report.seeds:
            stop = time.monotonic() + options.seconds / len(self.report.seeds)
            since_check: list[Case] = []
            since_cleanup: list[Case] = []
            for number in range(options.first, options.first + options.cases):
                if time.monotonic() > stop or any(
                    s.process.poll() is not None for s in self.servers.values()
                ):
                    break
                case, began = make_case(fuzz_seed, number), time.monotonic()
                result = run_case(case, self.servers[case.server])
                self.after_case(result)
                self.report.results.append(result)
                for prop, detail in result.failures:
                    notes = "".join(f"\n{note}" for note in result.notes)
                    self.fail(prop, detail + notes, f"seed {fuzz_seed} case {number} ({case.family})", case)
                if options.verbose:
                    took, failed = time.monotonic() - began, [p for p, _ in result.failures]
                    print(
                        f"{fuzz_seed} {number} {took:.2f}s {result.outcome} {failed} {result.notes}",
                        case.what[:150],
                    )
                since_check.append(case)
                since_cleanup.append(case)
                if len(since_cleanup) >= options.cleanup_every:
                    self.checkpoint(
                        f"seed {fuzz_seed}, cases {since_cleanup[0].number}-{number}", since_cleanup, True
                    )
                    since_check, since_cleanup = [], []
                elif len(since_check) >= options.check_every:
                    self.checkpoint(
                        f"seed {fuzz_seed}, cases {since_check[0].number}-{number}", since_check, False
                    )
                    since_check = []
            if since_cleanup:
                span = f"{since_cleanup[0].number}-{since_cleanup[-1].number}"
                where = f"seed {fuzz_seed}, at the end (cases {span})"
                self.checkpoint(where, since_cleanup, True)
        for watch in self.watches.values():
            self.judge_log(watch.take(), None)
        self.report.seconds = time.monotonic() - started


def run(seeds: list[int], options: Options | None = None, out: Callable[[str], None] = print) -> Report:
    """Start Redis and two Daphnes, fuzz them with each seed in turn, stop them; return the report."""
    options, report = options or Options(), Report(list(seeds))
    out(f"bench.fuzz: seeds {' '.join(map(str, seeds))}; replay one: python -m bench.fuzz --seed S --case K")
    raise_file_limit()
    redis_server, servers = RedisServer().start(), {}
    try:
        env = project_env(redis_server.url, **SETTINGS)
        servers["main"] = DaphneServer(env=env).start()
        servers["limited"] = DaphneServer(env={**env, **RATE_LIMITED}).start()
        report.logs = [str(server.log_path) for server in servers.values()]
        Fuzz(report, servers, env, redis_server.url, options).go()
    finally:
        for server in servers.values():
            server.stop()
        redis_server.stop()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seed", type=int, action="append", help="a seed (repeat for more); default: a random one"
    )
    parser.add_argument("--seconds", type=float, default=60, help="time for the cases, shared by the seeds")
    parser.add_argument("--cases", type=int, default=100_000, help="at most this many cases per seed")
    parser.add_argument("--case", type=int, help="replay this one case")
    parser.add_argument("--from", dest="first", type=int, default=0, help="the first case number")
    parser.add_argument("--check-every", type=int, default=10, help="cases between echo checks")
    parser.add_argument("--cleanup-every", type=int, default=100, help="cases between clean-up checks")
    parser.add_argument(
        "--rss-limit-mib", type=float, default=200, help="Daphne's RSS bound over its baseline"
    )
    parser.add_argument("--verbose", action="store_true", help="print each case's outcome as it comes")
    parser.add_argument("--list", action="store_true", help="print the cases (up to 1000) and send nothing")
    args = parser.parse_args(argv)
    seeds = args.seed or [random.SystemRandom().randrange(2**32)]
    first, cases = (args.case, 1) if args.case is not None else (args.first, args.cases)
    if args.list:
        for fuzz_seed in seeds:
            for number in range(first, first + min(cases, 1000)):
                case = make_case(fuzz_seed, number)
                print(f"{fuzz_seed} {number} {case.family}: {case.what}")
        return 0
    options = Options(
        args.seconds, cases, first, args.check_every, args.cleanup_every, args.rss_limit_mib, args.verbose
    )
    report = run(seeds, options, out=lambda line: print(line, flush=True))
    print(report.text())
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
