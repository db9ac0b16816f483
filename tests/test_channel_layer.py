"""The channel layer's overflow guard, and the metrics that count what it and the consumers do."""

import asyncio
import logging
import urllib.request

import pytest
import redis.asyncio
import websockets
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import Client

from echo import metrics
from echo.channel_layer import RedisPubSubChannelLayer
from echo.consumers import EchoConsumer


@pytest.fixture
async def layer(own_redis):
    layer = RedisPubSubChannelLayer(hosts=[{"address": own_redis.url}], capacity=3)
    yield layer
    await layer.flush()


async def test_a_consumer_that_falls_behind_gets_an_overflow_message_not_unbounded_memory(layer, caplog):
    """Past capacity, messages are dropped and counted, one warning is logged, and the consumer is told."""
    channel = await layer.new_channel()
    shard = layer._get_layer()._get_shard(channel)
    drops_before = metrics.overflow_drops._value.get()
    with caplog.at_level(logging.WARNING, logger="echo.channel_layer"):
        for n in range(6):
            shard._receive_message(
                {"channel": channel.encode(), "data": layer.serialize({"type": "m", "n": n})}
            )
    received = [await layer.receive(channel) for _ in range(4)]
    assert received == [
        {"type": "m", "n": 0},
        {"type": "m", "n": 1},
        {"type": "m", "n": 2},
        {"type": "channel.overflow"},
    ]
    assert metrics.overflow_drops._value.get() - drops_before == 3
    warnings = [r.getMessage() for r in caplog.records if r.name == "echo.channel_layer"]
    assert len(warnings) == 1 and "is 3 messages behind" in warnings[0]


@pytest.mark.usefixtures("channel_layer_settings")
@pytest.mark.django_db(transaction=True)
async def test_overflow_closes_the_connection_with_1013(registry):
    """A consumer told of an overflow closes with 1013, so that its client reconnects and resumes."""
    communicator = WebsocketCommunicator(EchoConsumer.as_asgi(), "/ws/")
    assert (await communicator.connect())[0]
    channel = next(iter(registry.added.values()))["channel_name"]
    await get_channel_layer().send(channel, {"type": "channel.overflow"})
    closed = await communicator.receive_output(timeout=3)
    assert (closed["code"], closed["reason"]) == (1013, "fell behind: reconnect to get the missed broadcasts")


@pytest.mark.django_db
def test_metrics_are_for_staff_unless_opened(settings):
    """/metrics: 403 with a one-line reason for others, Prometheus text for staff or when public."""
    client = Client()
    response = client.get("/metrics")
    assert response.status_code == 403 and b"METRICS_PUBLIC" in response.content
    client.force_login(User.objects.create_user("ops", is_staff=True))
    response = client.get("/metrics")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain; version=")
    settings.METRICS_PUBLIC = True
    assert Client().get("/metrics").status_code == 200


async def test_metrics_count_connections_and_messages_on_a_live_server(start_daphne):
    """A live process's /metrics counts its open connections and the messages in and out."""
    server = start_daphne(METRICS_PUBLIC="1")
    async with websockets.connect(server.ws_url + "/ws/") as ws:
        for n in range(3):
            await ws.send(f"m{n}")
            await ws.recv()
        with urllib.request.urlopen(server.http_url + "/metrics", timeout=5) as response:
            text = response.read().decode()
    assert "echo_connections_open 1.0" in text
    assert "echo_messages_received_total 3.0" in text
    assert "echo_messages_sent_total 3.0" in text
    for name in (
        "echo_broadcasts_total",
        "echo_channel_layer_overflow_drops_total",
        "echo_channel_layer_errors_total",
        "echo_slow_client_closes_total",
    ):
        assert f"# TYPE {name} counter" in text


async def test_consumer_channels_cost_one_pattern_subscription_per_process(layer, own_redis):
    """Twenty consumers' channels make one PSUBSCRIBE, no SUBSCRIBE each, and still get their messages."""
    channels = [await layer.new_channel() for _ in range(20)]
    client = redis.asyncio.Redis.from_url(own_redis.url)
    try:
        assert await client.pubsub_numpat() == 1
        assert await client.pubsub_channels("asgispecific.*") == []
    finally:
        await client.aclose()
    await layer.send(channels[7], {"type": "hello", "n": 7})
    assert await asyncio.wait_for(layer.receive(channels[7]), 5) == {"type": "hello", "n": 7}


async def test_a_local_push_reaches_every_member_as_one_event_whose_frame_is_made_once(layer):
    """deliver_local hands each local member the same event, unserialized; the frame made for the
    first member serves the rest (a push to 2,000 local clients was 2,000 msgpack round trips and
    2,000 JSON encodings)."""
    from echo import services

    channels = [await layer.new_channel() for _ in range(3)]
    event = {
        "type": "broadcast.message",
        "id": 5,
        "text": "hi",
        "group": "all",
        "sender": "server",
        "sent_at": "t",
    }
    layer.deliver_local([*channels, "specific.not-here"], event)
    received = [await asyncio.wait_for(layer.receive(channel), 1) for channel in channels]
    assert all(message is event for message in received)
    frames = [services.broadcast_frame(event=message, as_json=True, limit=1000) for message in received]
    assert frames[0] == services.protocol.push_envelope(event) and '"_frames"' not in frames[0]
    assert frames[1] is frames[0] and frames[2] is frames[0]
    assert services.broadcast_frame(event=event, as_json=False, limit=1000) == "Server broadcast: hi"
