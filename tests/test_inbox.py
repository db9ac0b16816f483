"""project.inbox.Inbox: the queue of a connection's one reader keeps order, waits, and loses nothing."""

import asyncio

import pytest

from project.inbox import Inbox


async def test_items_come_out_in_the_order_they_went_in_however_they_interleave():
    inbox, out, n = Inbox(), [], 0
    for burst in (1, 5, 2, 40, 3):
        for _ in range(burst):
            inbox.put_nowait(n)
            n += 1
        for _ in range(burst // 2 + 1):
            out.append(await inbox.get())
    while not inbox.empty():
        out.append(await inbox.get())
    assert out == list(range(n))
    assert inbox.qsize() == 0


async def test_a_waiting_reader_is_woken_and_a_cancelled_one_loses_nothing():
    inbox = Inbox()
    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait("first")
    assert await asyncio.wait_for(reader, 1) == "first"
    cancelled = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait("second")  # wakes the reader, which is then cancelled before it takes it
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert inbox.qsize() == 1
    assert await inbox.get() == "second"


async def test_one_reader_only():
    inbox = Inbox()
    first = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="one reader"):
        await inbox.get()
    first.cancel()
