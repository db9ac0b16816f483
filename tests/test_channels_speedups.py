"""project.channels_speedups: pinned with Channels, and its message loop keeps the original's contract."""

import asyncio
import logging
import re

import channels
import channels.consumer
import pytest
from channels.exceptions import StopConsumer

from project import channels_speedups
from project.channels_speedups import await_many_dispatch
from tests.servers import ROOT


def test_written_for_the_pinned_channels():
    """A Channels upgrade in requirements.txt must come with a fresh look at its message loop."""
    pinned = re.search(r"(?m)^channels==(\S+)$", (ROOT / "requirements.txt").read_text()).group(1)
    assert channels_speedups.CHANNELS_WRITTEN_FOR == pinned == channels.__version__


def test_left_alone_in_another_version(monkeypatch, caplog):
    monkeypatch.setattr(channels.consumer, "await_many_dispatch", channels.consumer.await_many_dispatch)
    original = channels.consumer.await_many_dispatch
    monkeypatch.setattr(channels, "__version__", "99.0")
    with caplog.at_level(logging.WARNING, logger="project.channels_speedups"):
        assert channels_speedups.apply() is False
    assert channels.consumer.await_many_dispatch is original
    assert "keep its own message loop" in caplog.text


def test_installed_for_every_consumer(monkeypatch):
    monkeypatch.setattr(channels.consumer, "await_many_dispatch", channels.consumer.await_many_dispatch)
    assert channels_speedups.apply() is True
    assert channels.consumer.await_many_dispatch is await_many_dispatch


def source(queue: asyncio.Queue):
    return queue.get


async def test_each_source_in_order_one_message_at_a_time():
    """Messages of both sources are all handled, each source's in order, never two handlers at once."""
    client, layer = asyncio.Queue(), asyncio.Queue()
    handled, running = [], []

    async def dispatch(message):
        running.append(message)
        assert len(running) == 1, f"two handlers at once: {running}"
        await asyncio.sleep(0)  # a handler that awaits lets the other source's pump try to run
        handled.append(message)
        running.remove(message)
        if message == "stop":
            raise StopConsumer()

    for n in range(50):
        client.put_nowait(f"c{n}")
        layer.put_nowait(f"l{n}")
    loop = asyncio.create_task(await_many_dispatch([source(client), source(layer)], dispatch))
    while len(handled) < 100:
        await asyncio.sleep(0.01)
    client.put_nowait("stop")
    with pytest.raises(StopConsumer):
        await asyncio.wait_for(loop, 5)
    assert [m for m in handled if m.startswith("c")] == [f"c{n}" for n in range(50)]
    assert [m for m in handled if m.startswith("l")] == [f"l{n}" for n in range(50)]


async def test_the_loop_turns_between_two_messages_of_a_burst():
    """A source whose queue holds many messages does not keep the loop: writes and others get a turn."""
    client, layer = asyncio.Queue(), asyncio.Queue()
    turns, seen = [0], []

    async def other_connection():
        while True:
            turns[0] += 1
            await asyncio.sleep(0)

    async def dispatch(message):
        seen.append(turns[0])
        if len(seen) == 20:
            raise StopConsumer()

    for n in range(20):
        layer.put_nowait(n)
    other = asyncio.create_task(other_connection())
    await asyncio.sleep(0)
    with pytest.raises(StopConsumer):
        await asyncio.wait_for(await_many_dispatch([source(client), source(layer)], dispatch), 5)
    other.cancel()
    assert len(set(seen)) == 20, f"the loop did not turn between messages: {seen}"


async def test_a_handler_error_is_raised_and_every_task_ends():
    """The first exception a handler raises reaches the caller; no task of the loop is left running."""
    client, layer = asyncio.Queue(), asyncio.Queue()

    async def dispatch(message):
        raise RuntimeError(f"handler failed on {message}")

    before = asyncio.all_tasks()
    loop = asyncio.create_task(await_many_dispatch([source(client), source(layer)], dispatch))
    await asyncio.sleep(0.01)
    layer.put_nowait("x")
    with pytest.raises(RuntimeError, match="handler failed on x"):
        await asyncio.wait_for(loop, 5)
    assert asyncio.all_tasks() - before == {asyncio.current_task()} - before


async def test_cancelled_while_a_handler_runs_ends_every_task():
    """Daphne cancels an application that outlives its socket: the handler is interrupted, nothing runs on."""
    client, layer = asyncio.Queue(), asyncio.Queue()
    started, finished = asyncio.Event(), []

    async def dispatch(message):
        started.set()
        await asyncio.sleep(10)
        finished.append(message)

    before = asyncio.all_tasks()
    loop = asyncio.create_task(await_many_dispatch([source(client), source(layer)], dispatch))
    client.put_nowait("slow")
    await asyncio.wait_for(started.wait(), 5)
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop
    assert finished == []
    assert asyncio.all_tasks() - before == {asyncio.current_task()} - before


async def test_one_source():
    client = asyncio.Queue()
    handled = []

    async def dispatch(message):
        handled.append(message)
        if len(handled) == 3:
            raise StopConsumer()

    for n in range(3):
        client.put_nowait(n)
    with pytest.raises(StopConsumer):
        await asyncio.wait_for(await_many_dispatch([source(client)], dispatch), 5)
    assert handled == [0, 1, 2]
