"""The echo.json subprotocol: JSON envelopes instead of plain text frames.

Client to server, one object per text frame:
    {"type": "echo", "text": "..."}
    {"type": "join", "group": "name"}      {"type": "leave", "group": "name"}
    {"type": "say", "group": "name", "text": "..."}   (to every member of a group the sender is in)
Server to client:
    {"type": "welcome", "connection": "1f2e3d4c", "user": "alice" or null, "groups": ["all"],
     "last_broadcast": 41}  (first; reconnect with ?after=<the last broadcast id you have>)
    {"type": "echo", "text": "Server: Hello. You said: ..."}
    {"type": "broadcast", "id": 7, "text": "...", "group": "all", "sender": "alice", "sent_at": "..."}
        (a push to one user has "group": "user:<their id>", a group no client can join)
    {"type": "message", "id": 8, "text": "...", "group": "red", "sender": "alice", "sent_at": "..."}
        (a room message: what a member said with "say"; "sender" is a username, or "guest-<connection>")
    {"type": "presence", "online": 12}
    {"type": "joined" | "left", "group": "name", "groups": ["all", "name"]}
    {"type": "error", "error": "what was wrong with the last message"}
    {"type": "resumed", "after": 41, "replayed": 3, "truncated": false}  (after ?after=41 on connect)
Binary frames are echoed as binary, as on plain connections.
"""

import json
import math
from dataclasses import dataclass

JSON_SUBPROTOCOL = "echo.json"
# Each type a client may send, and its string fields: the first is ClientMessage.value.
CLIENT_TYPES = {"echo": ("text",), "join": ("group",), "leave": ("group",), "say": ("group", "text")}
# How much of a client's string an error message quotes: errors stay short whatever came.
SHOWN_CHARS = 40


class ProtocolError(ValueError):
    """A client message that is not a valid echo.json message."""


@dataclass(frozen=True)
class ClientMessage:
    type: str
    value: str  # the text of an echo, the group of a join, leave or say
    text: str = ""  # the text of a say


def refuse_constant(name: str) -> None:
    raise ProtocolError(f"expected JSON, got {name}, which JSON does not allow")


def finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ProtocolError("expected JSON, got a number out of range")
    return number


# Built once: json.loads with hooks would build a decoder per message.
decoder = json.JSONDecoder(parse_constant=refuse_constant, parse_float=finite_float)


def parse(text: str) -> ClientMessage:
    """Read one client frame, or raise ProtocolError naming what was expected and what came."""
    # Every text ends in one or the other: JSON nested deeper than the parser goes, numbers out
    # of range, NaN and strings with lone surrogates (which cannot be sent back) are errors too.
    try:
        data = decoder.decode(text)
    except ProtocolError:
        raise
    except RecursionError:
        raise ProtocolError("expected JSON, got objects or arrays nested too deeply") from None
    except json.JSONDecodeError:
        raise ProtocolError("expected a JSON object, got text that is not JSON") from None
    except ValueError:  # an integer past Python's digit limit
        raise ProtocolError("expected JSON, got an integer with too many digits") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"expected a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in CLIENT_TYPES:
        raise ProtocolError(f"expected type to be one of {', '.join(CLIENT_TYPES)}, got {shown(kind)}")
    return ClientMessage(kind, *(string_field(data, field, kind) for field in CLIENT_TYPES[kind]))


def string_field(data: dict, field: str, kind: str) -> str:
    """Return the string ``field`` of a client message, or raise ProtocolError saying what came."""
    value = data.get(field)
    if not isinstance(value, str):
        raise ProtocolError(f"expected a string {field!r} in a {kind!r} message, got {shown(value)}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ProtocolError(
                f"expected {field!r} to be Unicode text, got a lone surrogate "
                f"U+{ord(value[error.start]):04X} at position {error.start}"
            ) from None
    return value


def shown(value: object) -> str:
    """Quote a client's value in an error message, briefly: a short repr, or what kind of value it is."""
    if isinstance(value, str):
        if len(value) <= SHOWN_CHARS:
            return repr(value)
        return f"{value[:SHOWN_CHARS]!r}... ({len(value)} characters)"
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if abs(value) < 10**SHOWN_CHARS else f"an integer of over {SHOWN_CHARS} digits"
    return f"a {type(value).__name__}"  # a dict or list: never repr'd, it may nest deeply


def encode(kind: str, **fields) -> str:
    """Return the JSON envelope of type ``kind``."""
    return json.dumps({"type": kind, **fields}, ensure_ascii=False)


def encode_within(limit: float, kind: str, **fields) -> str:
    """Return the envelope of type ``kind``, or raise ProtocolError if it is over ``limit`` bytes."""
    envelope = encode(kind, **fields)
    size = oversize(envelope, limit)
    if size:
        raise ProtocolError(f"the {kind} reply would be {size} bytes, over the limit of {limit} bytes")
    return envelope


def oversize(data: str | bytes, limit: float) -> int:
    """Return the size in bytes of ``data`` (text as UTF-8) if it is over ``limit``, else 0."""
    if isinstance(data, bytes):
        return len(data) if len(data) > limit else 0
    if len(data) * 4 <= limit:  # cannot be over (4 bytes a character at most): no encoding
        return 0
    size = len(data.encode("utf-8", "surrogatepass"))
    return size if size > limit else 0


def push_envelope(event: dict) -> str:
    """Return the envelope for a push event from the push log: a broadcast, or a room message
    (pushes logged before room messages existed have no kind: they are broadcasts)."""
    kind = "message" if event.get("kind") == "message" else "broadcast"
    fields = {key: event[key] for key in ("id", "text", "group", "sender", "sent_at")}
    return encode(kind, **fields)
