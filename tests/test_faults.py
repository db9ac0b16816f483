"""The fault-injection tools themselves, against real processes: LinkProxy and SentinelCluster."""

import socket
import time
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio
from redis.sentinel import Sentinel

from tests.faults import LinkProxy
from tests.sentinel import SentinelCluster
from tests.servers import RedisServer


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[LinkProxy]:
    """A LinkProxy of this test's own, in front of the session's Redis."""
    with LinkProxy(redis_server.port) as proxy:
        yield proxy


@pytest.fixture
def client(proxy: LinkProxy) -> Iterator[redis.Redis]:
    """A redis-py client that goes through the proxy."""
    client = redis.Redis.from_url(proxy.url_for(db=0), socket_timeout=5)
    yield client
    client.close()


def reset_on_arrival(port: int) -> bool:
    """Open a raw connection to ``port``; say whether it was reset (RST) without a byte, as when cut."""
    try:
        # The reset can beat connect() itself back (it then fails), or come after (the first recv fails).
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.recv(1)
    except ConnectionResetError:
        return True
    return False  # a byte, or a clean close (FIN): not a cut


def test_a_client_pings_redis_through_the_proxy(proxy, client):
    """Bytes go both ways: PING, and a SET then GET of the same key, through one forwarded connection."""
    assert proxy.url_for(db=3) == f"redis://127.0.0.1:{proxy.port}/3"
    assert client.ping() is True
    client.set("faults:through", "the proxy")
    assert client.get("faults:through") == b"the proxy"
    assert proxy.connections == 1 and proxy.accepted == 1


def test_cut_resets_the_open_connection_and_new_ones(proxy, client):
    """After cut(), the same client's next command fails, and so does a new client: both see resets."""
    assert client.ping() is True
    proxy.cut()
    assert proxy.connections == 0
    with pytest.raises(redis.ConnectionError):
        client.ping()
    fresh = redis.Redis.from_url(proxy.url_for(), socket_timeout=5)
    try:
        with pytest.raises(redis.ConnectionError):
            fresh.ping()
    finally:
        fresh.close()
    assert reset_on_arrival(proxy.port)  # an RST (SO_LINGER 0), as a crash or a firewall would, not a FIN
    assert proxy.refused >= 2 and proxy.connections == 0


def test_restore_lets_new_clients_through_again(proxy, client):
    """After restore(), a new client PINGs; the client that was cut reconnects on its own."""
    assert client.ping() is True
    proxy.cut()
    with pytest.raises(redis.ConnectionError):
        client.ping()
    proxy.restore()
    fresh = redis.Redis.from_url(proxy.url_for(), socket_timeout=5)
    try:
        assert fresh.ping() is True
    finally:
        fresh.close()
    assert client.ping() is True  # redis-py drops the broken connection and opens a new one


def test_delay_adds_latency_to_each_chunk_each_way(proxy, client):
    """delay(0.3) makes a PING take at least 0.3 s (0.6: both ways); delay(0) makes it fast again."""
    assert client.ping() is True
    proxy.delay(0.3)
    started = time.monotonic()
    assert client.ping() is True
    assert time.monotonic() - started >= 0.6
    proxy.delay(0)
    started = time.monotonic()
    assert client.ping() is True
    assert time.monotonic() - started < 0.3


def test_a_delay_is_latency_not_a_pause_per_chunk(proxy, client):
    """Under delay(0.1), 4 MB each way take far less than 0.1 s times their (at least 64) chunks."""
    value = bytes(range(256)) * (4 * 1024 * 1024 // 256)
    assert client.ping() is True  # connect first: the handshake's round trips are not what we time
    proxy.delay(0.1)
    started = time.monotonic()
    client.set("faults:delayed", value)
    assert client.get("faults:delayed") == value
    elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 3, f"{elapsed:.2f} s"  # two round trips of 0.2 s; 64 chunks in a row: 6.4 s
    client.delete("faults:delayed")


def test_a_large_transfer_goes_through_unchanged(proxy, client):
    """A 32 MB value goes up and comes back byte for byte."""
    value = bytes(range(251)) * (32 * 1024 * 1024 // 251)  # 251: a prime, so chunk edges never line up
    client.set("faults:large", value)
    assert client.get("faults:large") == value
    client.delete("faults:large")


def test_hundreds_of_connections_are_forwarded_and_cut_together(proxy):
    """300 connections at once all PING, are counted, and are all reset by one cut()."""
    pool = redis.ConnectionPool.from_url(proxy.url_for(), socket_timeout=5, max_connections=300)
    try:
        connections = [pool.get_connection() for _ in range(300)]
        for connection in connections:
            connection.send_command("PING")
        for connection in connections:
            assert connection.read_response() == b"PONG"
        assert proxy.connections == 300
        proxy.cut()
        assert proxy.connections == 0
        failed = 0
        for connection in connections:
            try:
                connection.send_command("PING")
                connection.read_response()
            except redis.ConnectionError:
                failed += 1
        assert failed == 300
    finally:
        pool.disconnect()


async def test_the_proxy_works_from_async_tests_too(proxy):
    """An asyncio client through the proxy: cut() breaks it, restore() lets a new one in."""
    client = redis.asyncio.Redis.from_url(proxy.url_for(), socket_timeout=5)
    fresh = redis.asyncio.Redis.from_url(proxy.url_for(), socket_timeout=5)
    try:
        assert await client.ping() is True
        proxy.cut()  # blocks this loop only as long as the proxy's own loop takes to reset
        with pytest.raises(redis.ConnectionError):
            await client.ping()
        proxy.restore()
        assert await fresh.ping() is True
    finally:
        await client.aclose()
        await fresh.aclose()


def test_stop_closes_the_port_and_every_connection(redis_server):
    """Leaving the context manager stops the proxy: open connections are reset, the port refuses."""
    with LinkProxy(redis_server.port) as proxy:
        client = redis.Redis.from_url(proxy.url_for(), socket_timeout=5)
        assert client.ping() is True
    try:
        with pytest.raises(redis.ConnectionError):
            client.ping()
    finally:
        client.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=5).close()


@pytest.mark.timeout(90)
def test_a_sentinel_cluster_fails_over_to_the_replica_with_the_data():
    """Kill the primary: the sentinels promote the replica, which has the data and takes writes."""
    with SentinelCluster() as cluster:
        addresses = [f"{host}:{port}" for host, port in cluster.sentinel_addresses]
        assert len(addresses) == 3 and cluster.sentinels_setting == ",".join(addresses)
        sentinel = Sentinel(cluster.sentinel_addresses, socket_timeout=2)
        before = sentinel.master_for(cluster.master_name, socket_timeout=2)
        after = sentinel.master_for(cluster.master_name, socket_timeout=2)
        try:
            old_port = cluster.primary_port()
            assert sentinel.discover_master(cluster.master_name) == ("127.0.0.1", old_port)
            before.set("faults:failover", "survives")
            assert before.wait(1, 1000) == 1  # on the replica too, before we kill the primary

            assert cluster.kill_primary() == old_port
            started = time.monotonic()
            new_port = cluster.wait_for_failover()
            failover = time.monotonic() - started
            assert new_port != old_port and cluster.primary_port() == new_port
            assert failover < 30, cluster.log_tails()

            assert sentinel.discover_master(cluster.master_name) == ("127.0.0.1", new_port)
            assert after.get("faults:failover") == b"survives"
            assert after.set("faults:after", "written") is True
            assert after.get("faults:after") == b"written"
        finally:
            before.connection_pool.disconnect()
            after.connection_pool.disconnect()
            for client in sentinel.sentinels:
                client.close()
