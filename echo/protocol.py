"""The echo.json subprotocol: JSON envelopes instead of plain text frames.

Client to server, one object per text frame:
    {"type": "echo", "text": "..."}
    {"type": "join", "group": "name"}      {"type": "leave", "group": "name"}
Server to client:
    {"type": "welcome", "connection": "1f2e3d4c", "user": "alice" or null, "groups": ["all"],
     "last_broadcast": 41}  (first; reconnect with ?after=<the last broadcast id you have>)
    {"type": "echo", "text": "Server: Hello. You said: ..."}
    {"type": "broadcast", "id": 7, "text": "...", "group": "all", "sender": "alice", "sent_at": "..."}
    {"type": "presence", "online": 12}
    {"type": "joined" | "left", "group": "name", "groups": ["all", "name"]}
    {"type": "error", "error": "what was wrong with the last message"}
    {"type": "resumed", "after": 41, "replayed": 3, "truncated": false}  (after ?after=41 on connect)
Binary frames are echoed as binary, as on plain connections.
"""

import json
from dataclasses import dataclass

JSON_SUBPROTOCOL = "echo.json"
CLIENT_TYPES = ("echo", "join", "leave")


class ProtocolError(ValueError):
    """A client message that is not a valid echo.json message."""


@dataclass(frozen=True)
class ClientMessage:
    type: str
    value: str  # the text of an echo, the group of a join or leave


def parse(text: str) -> ClientMessage:
    """Read one client frame, or raise ProtocolError naming what was expected and what came."""
    try:
        data = json.loads(text)
    except ValueError:
        raise ProtocolError("expected a JSON object, got text that is not JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"expected a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    if kind not in CLIENT_TYPES:
        raise ProtocolError(f"expected type to be one of {', '.join(CLIENT_TYPES)}, got {kind!r}")
    field = "text" if kind == "echo" else "group"
    value = data.get(field)
    if not isinstance(value, str):
        raise ProtocolError(f"expected a string {field!r} in a {kind!r} message")
    return ClientMessage(kind, value)


def encode(kind: str, **fields) -> str:
    """Return the JSON envelope of type ``kind``."""
    return json.dumps({"type": kind, **fields}, ensure_ascii=False)


def broadcast_envelope(event: dict) -> str:
    """Return the envelope for a broadcast event from the channel layer."""
    fields = {key: event[key] for key in ("id", "text", "group", "sender", "sent_at")}
    return encode("broadcast", **fields)
