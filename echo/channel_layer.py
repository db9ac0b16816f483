"""The Redis channel layer: channels_redis's pub/sub layer, made to ride out a burst and an outage.

It carries what goes to one consumer (an administrator's disconnect; pushes come from
echo.pushlog and are queued here by ``deliver_local``). While Redis is unreachable a new
connection is still accepted (its subscriptions wait and are made when Redis returns); the
receive loop says so once per outage instead of logging a traceback every second, and says when
Redis is back; a consumer's queue holds at most ``capacity`` messages: past that they are dropped,
counted and logged, and the consumer gets a ``channel.overflow`` message (it closes, and its client
resumes).
"""

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Iterable

from channels_redis import pubsub
from channels_redis.utils import _wrap_close, decode_hosts
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from echo import metrics
from project.inbox import Inbox

logger = logging.getLogger(__name__)

# What an unreachable Redis raises through redis-py.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)


def lost_link(error: BaseException) -> bool:
    """Tell whether ``error`` means the link to Redis is gone: redis-py's connection errors, or, on
    uvloop, a write to a transport the loop closed when the peer reset it ("the handler is closed")."""
    if isinstance(error, REDIS_DOWN):
        return True
    return isinstance(error, RuntimeError) and "the handler is closed" in str(error)


# Seconds between attempts to reach Redis again during an outage.
RETRY_INTERVAL = 0.5
# Messages a consumer may have waiting before the layer drops what comes next.
DEFAULT_CAPACITY = 500
OVERFLOW_MESSAGE = {"type": "channel.overflow"}
# A query parameter whose value is a credential (redis-py reads ?password=...).
SECRET_PARAMETER = re.compile(r"[?&](?:password|passwd|pass|pwd|secret|token|auth|api_key|key)=", re.I)
SAFE_USER = re.compile(r"[A-Za-z0-9._~-]{0,64}")


class Outage:
    """Whether one part of this process can reach Redis, logged once when that changes.

    ``part`` names what waits for Redis (the channel layer, the push log), so that each part
    says once what an outage costs it, and once that it is over.
    """

    def __init__(self, where: str, *, part: str, waiting: str) -> None:
        self.where, self.part, self.waiting = where, part, waiting
        self.since: float | None = None

    def down(self, error: BaseException) -> None:
        metrics.channel_layer_errors.inc()
        if self.since is None:
            self.since = time.monotonic()
            logger.warning(
                "Redis at %s is unreachable (%s) for the %s: echo and new connections go on, %s",
                self.where,
                error,
                self.part,
                self.waiting,
            )

    def up(self) -> None:
        if self.since is not None:
            logger.warning(
                "Redis at %s is reachable again for the %s after %.1f s",
                self.where,
                self.part,
                time.monotonic() - self.since,
            )
            self.since = None


class ResilientShard(pubsub.RedisSingleShardConnection):
    """One Redis host's pub/sub connection, whose subscriptions survive an outage."""

    def __init__(self, host: dict, channel_layer: pubsub.RedisPubSubLoopLayer) -> None:
        super().__init__(host, channel_layer)
        where = redacted_address(host)
        self.outage = Outage(where, part="channel layer", waiting="messages to one connection wait")
        self.pending_subscribe: set[str] = set()
        self.pending_unsubscribe: set[str] = set()
        self.patterns: set[str] = set()
        self.pending_patterns: set[str] = set()

    async def psubscribe(self, pattern: str) -> None:
        """Subscribe to every channel matching ``pattern`` (once), now or when Redis is back."""
        if pattern in self.patterns or pattern in self.pending_patterns:
            return
        async with self._lock:
            self._ensure_redis()
            self._ensure_receiver()
            try:
                await self._pubsub.psubscribe(pattern)
                self.patterns.add(pattern)
            except REDIS_DOWN as error:
                self.outage.down(error)
                self.pending_patterns.add(pattern)

    async def subscribe(self, channel: str) -> None:
        try:
            await super().subscribe(channel)
        except REDIS_DOWN as error:
            self.outage.down(error)
            self.pending_unsubscribe.discard(channel)
            self.pending_subscribe.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self.channel_layer.overflowed.discard(channel)
        if channel in self.pending_subscribe:
            self.pending_subscribe.discard(channel)
            return
        if channel not in self._subscribed_to:
            # A consumer's channel rides the process's pattern subscription: nothing to undo, and
            # no wait for the shard's lock (channels_redis takes it first), which a consumer being
            # cancelled at shutdown or after application_close_timeout could not finish.
            return
        try:
            await super().unsubscribe(channel)
        except REDIS_DOWN as error:
            self.outage.down(error)
            self.pending_unsubscribe.add(channel)

    def _receive_message(self, message: dict | None) -> None:
        if message is None:
            return
        name, data = message["channel"], message["data"]
        if isinstance(name, bytes):
            name = name.decode()
        layer = self.channel_layer
        if name in layer.channels:
            layer.deliver(name, data)
        elif name in layer.groups:
            for channel in layer.groups[name]:
                if channel in layer.channels:
                    layer.deliver(channel, data)

    async def catch_up(self) -> None:
        """Make the subscription changes that an outage held back."""
        async with self._lock:
            if self.pending_patterns:
                patterns = sorted(self.pending_patterns)
                await self._pubsub.psubscribe(*patterns)
                self.patterns.update(patterns)
                self.pending_patterns.difference_update(patterns)
            if self.pending_subscribe:
                channels = sorted(self.pending_subscribe)
                await self._pubsub.subscribe(*channels)
                self._subscribed_to.update(channels)
                self.pending_subscribe.difference_update(channels)
            if self.pending_unsubscribe:
                channels = sorted(self.pending_unsubscribe)
                await self._pubsub.unsubscribe(*channels)
                self._subscribed_to.difference_update(channels)
                self.pending_unsubscribe.difference_update(channels)

    async def _do_receiving(self) -> None:
        while True:
            try:
                if self.outage.since is not None:
                    await self._redis.ping()  # raises until Redis is back
                if self.pending_subscribe or self.pending_unsubscribe or self.pending_patterns:
                    await self.catch_up()
                self.outage.up()
                if self._pubsub and self._pubsub.subscribed:
                    message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
                    self._receive_message(message)
                else:
                    await asyncio.sleep(0.1)
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as error:
                if lost_link(error):
                    self.outage.down(error)
                else:
                    logger.exception("unexpected error in the channel layer's receive loop")
                await asyncio.sleep(RETRY_INTERVAL)


class ResilientLoopLayer(pubsub.RedisPubSubLoopLayer):
    """channels_redis's per-event-loop pub/sub layer, on resilient shards.

    Each consumer's own channel is named under this process's prefix and delivered through one
    pattern subscription per process, where channels_redis makes a SUBSCRIBE and an
    UNSUBSCRIBE round trip for every connection.
    """

    def __init__(self, hosts=None, *args, capacity: int = DEFAULT_CAPACITY, **kwargs) -> None:
        super().__init__(hosts, *args, **kwargs)
        self.capacity = capacity
        self.overflowed: set[str] = set()
        self._shards = [ResilientShard(host, self) for host in decode_hosts(hosts)]
        self.process_token = uuid.uuid4().hex

    def deliver(self, channel: str, data: bytes) -> None:
        """Queue ``data`` for a consumer, or drop it if the consumer is ``capacity`` messages behind."""
        queue = self.channels[channel]
        if queue.qsize() < self.capacity:
            queue.put_nowait(data)
            return
        metrics.overflow_drops.inc()
        if channel not in self.overflowed:
            self.overflowed.add(channel)
            queue.put_nowait(self.channel_layer.serialize(OVERFLOW_MESSAGE))
            logger.warning(
                "channel %s is %d messages behind: dropping what comes next and closing it, "
                "its client will resume what it missed",
                channel,
                queue.qsize() - 1,
            )

    async def new_channel(self, prefix: str = "specific.") -> str:
        namespace = f"{self.prefix}{prefix}{self.process_token}."
        channel = namespace + uuid.uuid4().hex
        self.channels[channel] = Inbox()  # one reader, its consumer: a tenth of asyncio.Queue's memory
        # A publish goes to the shard its channel hashes to: every shard carries the pattern.
        for shard in self._shards:
            await shard.psubscribe(namespace + "*")
        return channel


class RedisPubSubChannelLayer(pubsub.RedisPubSubChannelLayer):
    """channels_redis's pub/sub layer that keeps accepting connections while Redis is away."""

    def deliver_local(self, channels: Iterable[str], message: dict) -> None:
        """Queue ``message`` for each of ``channels`` that lives in this process, as it is.

        Every member gets the same dict, unserialized (it never leaves the process): one push to
        2,000 local members is one dict, not 2,000 msgpack round trips, and what a consumer
        makes of it once (echo.services.broadcast_frame) serves the others. Consumers read it,
        never change it.
        """
        layer = self._get_layer()
        for channel in channels:
            if channel in layer.channels:
                layer.deliver(channel, message)

    def deserialize(self, message):
        """Return a message from Redis (bytes) decoded, and one delivered locally as it is."""
        if isinstance(message, dict):
            return message
        return super().deserialize(message)

    def _get_layer(self) -> ResilientLoopLayer:
        loop = asyncio.get_running_loop()
        try:
            return self._layers[loop]
        except KeyError:
            layer = ResilientLoopLayer(*self._args, **self._kwargs, channel_layer=self)
            self._layers[loop] = layer
            _wrap_close(self, loop)
            return layer


def redacted_address(host: dict) -> str:
    """Return a host's address for a log line, without its password."""
    if "address" in host:
        return redacted(str(host["address"]))
    sentinels = ",".join(f"{name}:{port}" for name, port in host.get("sentinels", ()))
    return f"{host.get('master_name')} (sentinels {sentinels})"


def redacted(url: str) -> str:
    """Return ``url`` without any credential, fit for a log line or an error message.

    A query parameter that carries a secret (``?password=...``) loses its value and whatever
    follows it (an unescaped ``&``, ``#`` or ``@`` in the secret must not show its tail); then
    the userinfo keeps only its user name (``redis://user:***@host``; a lone ``secret@``
    becomes ``***@``), everything before the last ``@`` counting as userinfo, so that a
    password with an unescaped ``#``, ``?`` or ``/`` is not taken for the rest of the URL.
    """
    if secret := SECRET_PARAMETER.search(url):
        url = url[: secret.end()] + "***"
    scheme, separator, rest = url.partition("://")
    if not separator:
        return "***" if "@" in url else url
    userinfo, at, rest = rest.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        userinfo = f"{user}:***@" if colon and SAFE_USER.fullmatch(user) else "***@"
    return f"{scheme}://{userinfo}{rest}"
