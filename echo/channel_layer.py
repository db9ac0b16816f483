"""The Redis channel layer, with a connection pool that waits instead of failing under a burst."""

from channels_redis.core import RedisChannelLayer as StockRedisChannelLayer
from redis.asyncio import BlockingConnectionPool


class RedisChannelLayer(StockRedisChannelLayer):
    """A channels_redis layer whose pools queue for a free connection past ``max_connections``.

    redis-py 8's ``ConnectionPool`` raises ``MaxConnectionsError`` as soon as every
    connection is busy, so a burst of a few hundred handshakes (each one a ``group_add``)
    fails with HTTP 500. ``BlockingConnectionPool`` makes them wait their turn, for up to
    the host's ``timeout`` seconds, on a bounded number of Redis connections.
    """

    def create_pool(self, index: int) -> BlockingConnectionPool:
        host = dict(self.hosts[index])
        address = host.pop("address")
        return BlockingConnectionPool.from_url(address, **host)
