"""The push log: every push in one order, kept for a while in Redis, tailed by every process.

A push is appended to one Redis Stream (``PUSH_LOG_KEY``) by a script that gives it the next
position of one counter (1, 2, 3, ...): whatever the number of concurrent senders, there is one
order, and it is the order of the positions clients see (the ``id`` of a broadcast envelope). The
stream keeps the newest ``PUSH_LOG_LENGTH`` pushes.

Each Daphne process runs one ``Tail``: it reads the stream from the last position it delivered
and hands each push to the process's members of the push's group as a channel-layer event
(``broadcast.message``). After a Redis outage or a partition it reads on from where it stopped,
so its still-connected clients get what was pushed meanwhile, in order, once. A position the
stream no longer has (trimmed, or Redis lost its data) is read from the database, which keeps
every push for the admin; the counter never goes back below what the database holds.

A client that reconnects with ``?after=N`` gets the pushes after N from the stream (from the
database if the stream no longer has them), then live ones: no database query on the connect path
unless the stream falls short.
"""

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Iterable

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError

from echo import metrics
from echo.channel_layer import REDIS_DOWN, Outage, lost_link, redacted, redacted_address

logger = logging.getLogger(__name__)

BROADCAST_MESSAGE = "broadcast.message"
# Seconds one XREAD waits for new pushes before it asks again.
READ_BLOCK = 1.0
READ_BATCH = 500
RETRY_INTERVAL = 0.5
# Seconds a connect waits for this process's tail to know where the log stands (its first ever).
START_WAIT = 3.0

# One counter for every sender, the floor keeping it above what the database already holds (a
# Redis that lost its data starts again from 1).
APPEND_SCRIPT = """
local position = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[1])
if position <= floor then
  position = floor + 1
  redis.call('SET', KEYS[2], position)
end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '0-' .. position, 'push', ARGV[3])
return position
"""


class NotReplicated(RuntimeError):
    """Redis took the push, but no replica confirmed it in time: a failover could lose it."""


def redis_address() -> str:
    """Return where Redis is, for a message: the redacted URL, or the master and its sentinels."""
    if settings.REDIS_SENTINELS:
        return redacted_address(
            {"sentinels": settings.REDIS_SENTINELS, "master_name": settings.REDIS_MASTER_NAME}
        )
    return redacted(settings.REDIS_URL)


def counter_key() -> str:
    return f"{settings.PUSH_LOG_KEY}:position"


def connection_options() -> dict:
    return {
        "socket_timeout": settings.CHANNEL_LAYER_SEND_TIMEOUT + READ_BLOCK,
        "socket_connect_timeout": 3,
        "health_check_interval": 30,
    }


def sync_client() -> redis.Redis:
    """Return this process's client for appending (commands, the admin, the API): thread-safe."""
    return _sync_client(settings.REDIS_URL, tuple(settings.REDIS_SENTINELS), settings.REDIS_MASTER_NAME)


@functools.cache
def _sync_client(url: str, sentinels: tuple, master_name: str) -> redis.Redis:
    if sentinels:
        sentinel = redis.sentinel.Sentinel(sentinels, socket_timeout=3)
        return sentinel.master_for(master_name, **connection_options())
    return redis.Redis.from_url(url, **connection_options())


def async_client() -> redis.asyncio.Redis:
    """Return a new client for the tail, on the running event loop."""
    if settings.REDIS_SENTINELS:
        sentinel = redis.asyncio.sentinel.Sentinel(settings.REDIS_SENTINELS, socket_timeout=3)
        return sentinel.master_for(settings.REDIS_MASTER_NAME, **connection_options())
    return redis.asyncio.Redis.from_url(settings.REDIS_URL, **connection_options())


def append(push: dict, *, floor: int) -> int:
    """Append ``push`` (group, text, sender, sent_at) to the log; return its position."""
    client = sync_client()
    position = int(
        client.eval(
            APPEND_SCRIPT,
            2,
            settings.PUSH_LOG_KEY,
            counter_key(),
            floor,
            settings.PUSH_LOG_LENGTH,
            json.dumps(push, ensure_ascii=False),
        )
    )
    return position


def confirm_replicated() -> None:
    """Wait until ``REDIS_WAIT_REPLICAS`` replicas have what was appended, or raise NotReplicated."""
    wanted = settings.REDIS_WAIT_REPLICAS
    if wanted:
        timeout_ms = int(settings.CHANNEL_LAYER_SEND_TIMEOUT * 1000)
        acknowledged = sync_client().execute_command("WAIT", wanted, timeout_ms)
        if acknowledged < wanted:
            raise NotReplicated(f"{acknowledged} of {wanted} replicas confirmed it")


def event_of(position: int, push: dict) -> dict:
    """Return the channel-layer event that delivers the push at ``position``."""
    return {"type": BROADCAST_MESSAGE, "id": position, **push}


def entry_event(entry_id: bytes, fields: dict) -> dict:
    return event_of(int(entry_id.split(b"-")[1]), json.loads(fields[b"push"]))


async def read_after(after: int, *, upto: int | None, groups: Iterable[str]) -> tuple[list[dict], bool]:
    """Return the events after position ``after`` (up to ``upto``) for ``groups``, oldest first,
    and whether some were too old to be had (neither the stream nor the database has them)."""
    if upto is not None and upto <= after:
        return [], False
    wanted = set(groups)
    try:
        entries = await tail.reader().xrange(
            settings.PUSH_LOG_KEY, min=f"0-{after + 1}", max=f"0-{upto}" if upto else "+"
        )
    except Exception as error:
        if not lost_link(error):
            raise
        entries = []
    events = [entry_event(entry_id, fields) for entry_id, fields in entries]
    first = events[0]["id"] if events else (upto + 1 if upto else None)
    truncated = False
    if first is None or first > after + 1:
        # The stream does not reach back to ``after`` (trimmed, Redis lost its data or is down):
        # the database has every push recorded since.
        older, truncated = await database_sync_to_async(stored_events)(after=after, before=first)
        events = older + events
    return [event for event in events if event["group"] in wanted], truncated


def stored_events(*, after: int, before: int | None) -> tuple[list[dict], bool]:
    """Return the recorded pushes with positions between ``after`` and ``before``, and whether some
    in that range are missing, within the newest PUSH_LOG_LENGTH."""
    from echo.models import Broadcast  # the models need the app registry; this module does not

    rows = Broadcast.objects.filter(position__gt=after).select_related("sender").order_by("-position")
    if before is not None:
        rows = rows.filter(position__lt=before)
    newest = list(rows[: settings.PUSH_LOG_LENGTH])[::-1]
    expected_first = after + 1
    missing = bool(newest) and newest[0].position != expected_first
    if before is not None and not newest and before > expected_first:
        missing = True
    return [event_of(row.position, row.push()) for row in newest], missing


def stored_top() -> int:
    """Return the highest position the database holds, 0 if none."""
    from echo.models import Broadcast

    return (
        Broadcast.objects.filter(position__isnull=False)
        .order_by("-position")
        .values_list("position", flat=True)
        .first()
        or 0
    )


class Tail:
    """This process's reader of the push log and its members of each group."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.reset()

    def reset(self) -> None:
        # Made again with each event loop, so that it names the Redis of the settings of the time.
        self.outage = Outage(
            redis_address(), part="push log", waiting="pushes wait and are delivered in order when it is back"
        )
        self.members: dict[str, set[str]] = {}
        self.position: int | None = None
        self.started = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.client: redis.asyncio.Redis | None = None

    def reader(self) -> redis.asyncio.Redis:
        """Return the tail's client, for resumes: its pool gives them connections of their own."""
        self.start()
        return self.client

    def start(self) -> None:
        """Start reading the log on this event loop, unless already reading."""
        loop = asyncio.get_running_loop()
        if loop is not self.loop:  # a new event loop (each test has its own): start afresh on it
            self.loop = loop
            self.reset()
        if self.task is None or self.task.done():
            self.client = async_client()
            self.task = loop.create_task(self.run(self.client), name="push-log tail")

    def join(self, group: str, channel: str) -> None:
        """Deliver the pushes to ``group`` to ``channel`` from now on."""
        self.start()
        channels = self.members.setdefault(group, set())
        if channel not in channels:
            channels.add(channel)
            metrics.push_log_members.inc()

    def leave(self, group: str, channel: str) -> None:
        """Stop delivering the pushes to ``group`` to ``channel``."""
        channels = self.members.get(group)
        if channels is not None and channel in channels:
            channels.remove(channel)
            metrics.push_log_members.dec()
            if not channels:
                del self.members[group]

    async def ready(self) -> int | None:
        """Return the position this process has delivered up to, waiting briefly for the first."""
        self.start()
        if self.position is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(START_WAIT):
                    await self.started.wait()
        return self.position

    async def run(self, client: redis.asyncio.Redis) -> None:
        """Read the log for ever, from where this process stands, and deliver what comes."""
        try:
            while True:
                try:
                    if self.position is None:
                        self.position = await self.start_position(client)
                        self.started.set()
                    streams = {settings.PUSH_LOG_KEY: f"0-{self.position}"}
                    batch = await client.xread(streams, count=READ_BATCH, block=int(READ_BLOCK * 1000))
                    self.outage.up()
                    for _, entries in batch:
                        await self.deliver_entries(entries)
                except Exception as error:
                    if lost_link(error):
                        self.outage.down(error)
                        # Connections whose transport uvloop closed must not be handed out again.
                        await client.connection_pool.disconnect()
                    else:
                        logger.exception("push log: unexpected error in the tail; retrying")
                    await asyncio.sleep(RETRY_INTERVAL)
        finally:
            await client.aclose()

    async def start_position(self, client: redis.asyncio.Redis) -> int:
        """Return where the log stands: its counter, or the database's newest push if that is further
        (a Redis that lost its data, or is away: what the database has is history, not news)."""
        try:
            stored = await database_sync_to_async(stored_top)()
        except DatabaseError as error:
            logger.warning(
                "push log: the database did not say where the history ends (%s); starting from Redis", error
            )
            stored = 0
        try:
            return max(int(await client.get(counter_key()) or 0), stored)
        except REDIS_DOWN as error:
            self.outage.down(error)
            return stored

    async def deliver_entries(self, entries: list) -> None:
        for entry_id, fields in entries:
            event = entry_event(entry_id, fields)
            if event["id"] > self.position + 1:
                await self.fill_gap(before=event["id"])
            self.deliver(event)

    async def fill_gap(self, *, before: int) -> None:
        """Deliver, from the database, the pushes the stream skipped (trimmed or lost by Redis)."""
        events, missing = await database_sync_to_async(stored_events)(after=self.position, before=before)
        if missing:
            logger.warning(
                "push log: pushes after %s and before %s are neither in Redis nor in the database; "
                "clients of this process miss them",
                self.position,
                before,
            )
        for event in events:
            self.deliver(event)

    def deliver(self, event: dict) -> None:
        """Hand ``event`` to this process's members of its group, and move on past it."""
        if event["id"] <= self.position:
            return
        self.position = event["id"]
        channels = self.members.get(event["group"])
        if channels:
            get_channel_layer().deliver_local(channels, event)


tail = Tail()
