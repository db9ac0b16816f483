"""The server's logic: what it answers, which groups exist, and how a broadcast or a room message is sent."""

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
# A room message to a plain client: "Message from alice: hi".
MESSAGE_FORMAT = "Message from {sender}: {text}"

# Every ws/ connection is in this group; a broadcast with no group goes to it.
ALL_GROUP = "all"
# Every signed-in connection is also in its user's group, "user:<pk>": a name GROUP_NAME refuses,
# so no client can join or leave it, or say anything into it.
USER_GROUP_PREFIX = "user:"
# ROOM_SPEAKERS: signed-in users only, or guests too.
SPEAKERS_USERS = "users"
SPEAKERS_ANYONE = "anyone"
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
# JSON escapes a control character as \u00XX: six bytes, the most one character can take; in a
# plain frame a character takes at most four.
WIDEST_CHARACTER = "\x01"
WIDEST_PLAIN_CHARACTER = "\U0010ffff"


class InvalidGroupName(ValueError):
    """A group name outside what Channels allows."""


class InvalidBroadcast(ValueError):
    """A broadcast that cannot be stored or delivered: its text, or whom it is for."""


class SayRefused(ValueError):
    """A room message the server will not pass on: who said it, or where, is not allowed."""


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


def message_text(*, sender: str, text: str) -> str:
    """Return the frame a plain client gets for a room message."""
    return MESSAGE_FORMAT.format(sender=sender, text=text)


def user_group(user: AbstractBaseUser) -> str:
    """Return the group every connection of ``user`` is in: "user:<pk>"."""
    return f"{USER_GROUP_PREFIX}{user.pk}"


def signed_in(user: AbstractBaseUser | None) -> AbstractBaseUser | None:
    """Return ``user`` (a scope's user) if it is a signed-in user, else None."""
    return user if user is not None and user.is_authenticated else None


def guest_label(connection_id: str) -> str:
    """Return the name an anonymous speaker goes by: "guest-<connection id>"."""
    return f"guest-{connection_id}"


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
    """Return the UTF-8 size of the largest frame that can carry ``text``: a broadcast's or a room
    message's, JSON or plain, with every other field at its longest."""
    user_model = get_user_model()
    longest_username = user_model._meta.get_field(user_model.USERNAME_FIELD).max_length or 150
    longest_sender = max(longest_username, Broadcast._meta.get_field("sender_label").max_length)
    event = {
        "id": MAX_BROADCAST_ID,
        "text": text,
        "group": "x" * GROUP_NAME_MAX,
        "sender": WIDEST_CHARACTER * longest_sender,
        "sent_at": LONGEST_SENT_AT,
    }
    frames = (
        protocol.push_envelope({**event, "kind": Broadcast.BROADCAST}),
        protocol.push_envelope({**event, "kind": Broadcast.MESSAGE}),
        broadcast_text(text=text),
        message_text(sender=WIDEST_PLAIN_CHARACTER * longest_sender, text=text),
    )
    return max(len(frame.encode("utf-8")) for frame in frames)


def push_frame(event: dict, *, as_json: bool) -> str:
    """Return the frame that delivers a push event: an envelope, or a plain client's text."""
    if as_json:
        return protocol.push_envelope(event)
    if event.get("kind") == Broadcast.MESSAGE:
        return message_text(sender=event["sender"], text=event["text"])
    return broadcast_text(text=event["text"])


# Where a push event keeps the frames made of it: every local member of a group gets the same
# event (echo.channel_layer.deliver_local), so each frame is made once per process, not per client.
FRAMES_KEY = "_frames"


def broadcast_frame(*, event: dict, as_json: bool, limit: float) -> str:
    """Return the frame that delivers a push event, or raise InvalidBroadcast if it is over ``limit``."""
    frames = event.get(FRAMES_KEY)
    if frames is None:
        frames = event[FRAMES_KEY] = {}
    frame = frames.get(as_json)
    if frame is None:
        frame = frames[as_json] = push_frame(event, as_json=as_json)
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


def broadcast_send(
    *,
    text: str,
    group: str = ALL_GROUP,
    user: AbstractBaseUser | None = None,
    sender: AbstractBaseUser | None = None,
    sender_label: str = "",
    kind: str = Broadcast.BROADCAST,
) -> Broadcast:
    """Push ``text`` to every connection in ``group`` (or of ``user``) on every process, through
    the push log, and record it; its ``position`` is the id clients see, in the one order all
    senders share. ``sender`` is the user who sent it; ``sender_label`` names a sender that is not
    a user (a guest, an API key); ``kind`` is a broadcast or a room message."""
    if user is not None:
        if group != ALL_GROUP:
            raise InvalidBroadcast(f"give a group or a user, not both (group {group!r}, user {user})")
        if user.pk is None:
            raise InvalidBroadcast(f"user {user} is not saved: a push goes to a user in the database")
        group = user_group(user)
    else:
        validate_group_name(group)
    if kind not in (Broadcast.BROADCAST, Broadcast.MESSAGE):
        raise InvalidBroadcast(f"invalid kind {protocol.shown(kind)}: expected broadcast or message")
    if len(sender_label) > (longest := Broadcast._meta.get_field("sender_label").max_length):
        raise InvalidBroadcast(f"the sender label is over {longest} characters")
    validate_broadcast_text(text)  # before anything: what is pushed and stored must be deliverable
    broadcast = Broadcast(
        text=text, group=group, recipient=user, sender=sender, sender_label=sender_label, kind=kind
    )
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
    logger.info("%s=%s group=%s sender=%s sent", kind, broadcast.position, group, broadcast.sender_name)
    return broadcast


def say(
    *, group: str, text: str, user: AbstractBaseUser | None, connection_id: str, groups: list[str]
) -> Broadcast:
    """Push what a connection said in room ``group`` (one of its ``groups``) to every member of it,
    and record it as a room message; raise SayRefused, InvalidGroupName or InvalidBroadcast saying
    why it cannot, having recorded nothing."""
    user = signed_in(user)
    if user is None and settings.ROOM_SPEAKERS != SPEAKERS_ANYONE:
        raise SayRefused("only signed-in users may speak in a room: sign in first")
    validate_group_name(group)
    if group == ALL_GROUP:
        raise SayRefused(f"{ALL_GROUP!r} is every connection, not a room: join a group and say it there")
    if group not in groups:
        raise SayRefused(f"you are not in {group!r}: join it before you speak in it")
    if not text.strip():
        raise InvalidBroadcast("the text is empty: say something")
    label = "" if user is not None else guest_label(connection_id)
    try:
        return broadcast_send(text=text, group=group, sender=user, sender_label=label, kind=Broadcast.MESSAGE)
    except BroadcastNotSent as error:
        if error.broadcast.position is not None:
            # It went out (clients have it); only a replica's confirmation is missing.
            logger.warning("message=%s: %s", error.broadcast.position, error)
            return error.broadcast
        # Nobody got it: its speaker is told and may say it again, so no record of it stays.
        error.broadcast.delete()
        logger.warning(
            "message in %s not sent: Redis at %s (%s)",
            group,
            pushlog.redis_address(),
            describe_error(error.__cause__ or error),
        )
        # Clients are not told where Redis is (as /healthz tells only staff); the log line says.
        raise SayRefused("not sent: the server cannot reach its message store just now; try again") from None


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


def live_connections(*, group: str = ALL_GROUP, user: AbstractBaseUser | None = None) -> QuerySet[Connection]:
    """Return the connections in ``group`` (or of ``user``) of every process whose heartbeat is recent."""
    fresh_since = timezone.now() - timedelta(seconds=settings.PRESENCE_STALE_AFTER)
    live = Connection.objects.filter(process__last_seen__gte=fresh_since)
    if user is not None:
        return live.filter(user=user)
    if group == ALL_GROUP:
        return live
    return live.filter(
        Q(groups=group)
        | Q(groups__startswith=f"{group},")
        | Q(groups__endswith=f",{group}")
        | Q(groups__contains=f",{group},")
    )


def find_user(username: str) -> AbstractBaseUser:
    """Return the user named ``username``, or raise InvalidBroadcast saying there is none."""
    user_model = get_user_model()
    try:
        return user_model._default_manager.get_by_natural_key(username)
    except user_model.DoesNotExist:
        raise InvalidBroadcast(f"no user named {protocol.shown(username)}") from None


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
