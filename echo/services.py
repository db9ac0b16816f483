"""The server's logic: what it answers, which groups exist, and how a broadcast is sent."""

import asyncio
import logging
import re
import time
from collections.abc import Iterable
from contextlib import asynccontextmanager
from datetime import timedelta

from asgiref.sync import async_to_sync
from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from echo import metrics, protocol, pushlog
from echo.channel_layer import REDIS_DOWN
from echo.models import Broadcast, Connection

logger = logging.getLogger(__name__)

ECHO_PREFIX = "Server: Hello. You said: "
BROADCAST_PREFIX = "Server broadcast: "

# Every ws/ connection is in this group; a broadcast with no group goes to it.
ALL_GROUP = "all"
# Channel-layer message types, each handled by the consumer method of the same name (pushes
# arrive as echo.pushlog.BROADCAST_MESSAGE).
CLOSE_MESSAGE = "connection.close"

GROUP_NAME_MAX = 90
GROUP_NAME = re.compile(rf"[a-zA-Z0-9\-_.]{{1,{GROUP_NAME_MAX}}}")

# Close code an administrator's disconnect sends (4000-4999: for applications).
ADMIN_DISCONNECT_CODE = 4000

# The largest broadcast id (a 64-bit position) and the longest sent_at a frame can carry:
# a text is checked against its envelope with every other field at its longest.
MAX_BROADCAST_ID = 2**63 - 1
LONGEST_SENT_AT = "2026-11-21T06:10:00.000000+00:00"
# JSON escapes a control character as \u00XX: six bytes, the most one character can take.
WIDEST_CHARACTER = "\x01"


class InvalidGroupName(ValueError):
    """A group name outside what Channels allows."""


class InvalidBroadcast(ValueError):
    """A broadcast text that cannot be stored or delivered."""


class BroadcastNotSent(RuntimeError):
    """The broadcast was recorded but Redis did not take it (or did not confirm it)."""

    def __init__(self, message: str, *, broadcast: Broadcast) -> None:
        super().__init__(message)
        self.broadcast = broadcast


class RateLimit:
    """A token bucket: ``rate`` messages a second on average, bursts of up to ``burst``."""

    def __init__(self, *, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = time.monotonic()

    def allow(self) -> bool:
        """Take one token if there is one; a rate of 0 allows everything."""
        if self.rate <= 0:
            return True
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def echo_reply(*, text: str) -> str:
    """Return the server's answer to a text message."""
    return ECHO_PREFIX + text


def broadcast_text(*, text: str) -> str:
    """Return the frame a plain client gets for a broadcast, told apart from an echo by its prefix."""
    return BROADCAST_PREFIX + text


def validate_group_name(name: str) -> str:
    """Return ``name`` if it is a valid group name, else raise InvalidGroupName saying why."""
    if not isinstance(name, str) or not GROUP_NAME.fullmatch(name):
        raise InvalidGroupName(
            f"invalid group name {protocol.shown(name)}: use 1 to 90 letters, digits, '-', '_' or '.'"
        )
    return name


def validate_broadcast_text(text: str) -> str:
    """Return ``text`` if it can be stored and reach every client, else raise InvalidBroadcast saying why."""
    if "\x00" in text:
        raise InvalidBroadcast(
            f"the text contains a NUL character at position {text.index(chr(0))}, "
            "which the database cannot store"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidBroadcast(
            f"the text is not valid UTF-8: U+{ord(text[error.start]):04X} at position {error.start} "
            "is a lone surrogate (bytes that were not UTF-8?)"
        ) from None
    limit = settings.WEBSOCKET_MAX_MESSAGE_SIZE
    if limit and (size := largest_broadcast_frame(text)) > limit:
        raise InvalidBroadcast(
            f"the text is too long: its largest frame would be {size} bytes, {size - limit} over "
            f"WEBSOCKET_MAX_MESSAGE_SIZE ({limit} bytes)"
        )
    return text


def largest_broadcast_frame(text: str) -> int:
    """Return the UTF-8 size of the largest frame that can carry ``text``: its envelope at the longest."""
    user_model = get_user_model()
    longest_sender = user_model._meta.get_field(user_model.USERNAME_FIELD).max_length or 150
    event = {
        "id": MAX_BROADCAST_ID,
        "text": text,
        "group": "x" * GROUP_NAME_MAX,
        "sender": WIDEST_CHARACTER * longest_sender,
        "sent_at": LONGEST_SENT_AT,
    }
    frames = (protocol.broadcast_envelope(event), broadcast_text(text=text))
    return max(len(frame.encode("utf-8")) for frame in frames)


def broadcast_frame(*, event: dict, as_json: bool, limit: float) -> str:
    """Return the frame that delivers a broadcast event, or raise InvalidBroadcast if it is over ``limit``."""
    frame = protocol.broadcast_envelope(event) if as_json else broadcast_text(text=event["text"])
    size = protocol.oversize(frame, limit)
    if size:
        raise InvalidBroadcast(f"its frame of {size} bytes is over the limit of {limit} bytes")
    return frame


def presence_row(*, scope: dict, channel: str, peer: str, groups: list[str], subprotocol: str | None) -> dict:
    """Return what the presence registry records of a new ws/ connection."""
    user = scope.get("user")
    user_agent = next((value for key, value in scope.get("headers", ()) if key == b"user-agent"), b"")
    return {
        "channel_name": channel,
        "path": scope["path"],
        "groups": ",".join(groups),
        "user_id": user.pk if user is not None and user.is_authenticated else None,
        "peer": peer,
        "user_agent": user_agent.decode("latin1")[:300],
        "protocol": subprotocol or "",
        "connected_at": timezone.now(),
    }


def broadcast_send(*, text: str, group: str = ALL_GROUP, sender: AbstractBaseUser | None = None) -> Broadcast:
    """Push ``text`` to every connection in ``group`` on every process, through the push log, and
    record it; its ``position`` is the id clients see, in the one order all senders share."""
    validate_group_name(group)
    validate_broadcast_text(text)  # before anything: what is pushed and stored must be deliverable
    broadcast = Broadcast(text=text, group=group, sender=sender)
    floor = pushlog.stored_top()
    try:
        broadcast.position = pushlog.append(broadcast.push(), floor=floor)
        pushlog.confirm_replicated()
    except Exception as error:
        metrics.broadcasts_failed.inc()
        if broadcast.position is None:
            state = "is unreachable" if isinstance(error, (*REDIS_DOWN, TimeoutError)) else "failed"
            broadcast.pushed = False
            broadcast.save()
            message = (
                f"Redis at {pushlog.redis_address()} {state} ({describe_error(error)}): "
                f"broadcast (record {broadcast.pk}) is recorded but not sent"
            )
        else:
            broadcast.save()
            message = (
                f"broadcast #{broadcast.position} is sent, but no replica confirmed it "
                f"({describe_error(error)}): a Redis failover now could lose it"
            )
        raise BroadcastNotSent(message, broadcast=broadcast) from error
    try:
        with transaction.atomic():
            broadcast.save()
    except IntegrityError:
        # Another push holds this position: Redis lost its data between that sender's append and
        # its save, and the counter started again below it. The push went out; keep it on record.
        logger.warning(
            "broadcast=%s: position already recorded (Redis lost data?); kept without it", broadcast.position
        )
        broadcast.pk, broadcast.position = None, None
        broadcast.save()
    metrics.broadcasts_sent.inc()
    logger.info("broadcast=%s group=%s sender=%s sent", broadcast.position, group, broadcast.sender_name)
    return broadcast


def parse_after(values: list[str] | None) -> int | None:
    """Read the ``after`` query parameter: the id of the last broadcast the client has."""
    if not values:
        return None
    value = values[-1]
    digits = value.isascii() and value.isdigit() and len(value) <= len(str(MAX_BROADCAST_ID))
    if not digits or int(value) > MAX_BROADCAST_ID:
        raise ValueError(f"invalid after {protocol.shown(value)}: expected the id of a broadcast")
    return int(value)


def disconnect(*, connections: Iterable[Connection], reason: str) -> int:
    """Ask the processes holding ``connections`` to close them with code 4000; return how many."""
    channels = [connection.channel_name for connection in connections]
    event = {"type": CLOSE_MESSAGE, "code": ADMIN_DISCONNECT_CODE, "reason": reason}
    async_to_sync(_send_each)(channels, event)
    return len(channels)


def live_connections(*, group: str = ALL_GROUP) -> QuerySet[Connection]:
    """Return the connections in ``group`` of every process whose heartbeat is recent."""
    fresh_since = timezone.now() - timedelta(seconds=settings.PRESENCE_STALE_AFTER)
    live = Connection.objects.filter(process__last_seen__gte=fresh_since)
    if group == ALL_GROUP:
        return live
    return live.filter(
        Q(groups=group)
        | Q(groups__startswith=f"{group},")
        | Q(groups__endswith=f",{group}")
        | Q(groups__contains=f",{group},")
    )


def describe_error(error: BaseException) -> str:
    """Say what went wrong in a few words, without a traceback."""
    if isinstance(error, TimeoutError):
        return "timed out"
    return str(error) or type(error).__name__


async def _send_each(channels: list[str], event: dict) -> None:
    async with _private_layer() as layer:
        for channel in channels:
            await layer.send(channel, event)


@asynccontextmanager
async def _private_layer():
    """Yield a channel layer of its own for one sync call, closed before the call's loop is.

    ``async_to_sync`` may run in a loop made for this one call (a management command, the
    test client); pooled connections left behind in it fail later with "Event loop is
    closed" (channels_redis #332). Inside Daphne, the consumers' shared layer is left alone.
    """
    layer = channel_layers.make_backend(DEFAULT_CHANNEL_LAYER)
    try:
        async with asyncio.timeout(settings.CHANNEL_LAYER_SEND_TIMEOUT):
            yield layer
    finally:
        await layer.flush()
