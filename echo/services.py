"""What the server says: the echo reply and the text of a push, kept out of the consumers."""

ECHO_PREFIX = "Server: Hello. You said: "
BROADCAST_PREFIX = "Server broadcast: "


def echo_reply(*, text: str) -> str:
    """Return the server's answer to a text message."""
    return ECHO_PREFIX + text


def broadcast_text(*, text: str) -> str:
    """Return the frame a plain client gets for a broadcast, told apart from an echo by its prefix."""
    return BROADCAST_PREFIX + text
