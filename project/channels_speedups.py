"""A cheaper message loop for every Channels consumer, applied once from project.asgi (bench/cost.py).

Channels 4.3's ``await_many_dispatch`` waits on a consumer's two sources (the client's
``receive`` and the channel layer's) by creating a new Task for the next message of a source
each time one arrives and setting up and tearing down a full ``asyncio.wait`` around them: about
a fifth of Daphne's CPU under an echo load. Here each source gets one long-lived task that takes
its messages in turn and dispatches them under a lock shared by the sources, so that, as before,
one message is handled at a time, each source's in the order it came, with a turn of the event
loop between two messages. The loop ends as the
original does: the first exception a handler raises (StopConsumer included) goes to the caller,
and the tasks are cancelled and awaited before it does, whether the loop ended or was cancelled.

It replaces a function Channels imports by name, so it is guarded by the version it was written
for; tests/test_channels_speedups.py fails if Channels changes underneath.
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import channels
import channels.consumer

logger = logging.getLogger(__name__)

CHANNELS_WRITTEN_FOR = "4.3.2"


async def await_many_dispatch(
    consumer_callables: list[Callable[[], Awaitable[dict]]], dispatch: Callable[[dict], Awaitable[None]]
) -> None:
    """Take messages from every source in ``consumer_callables`` and ``dispatch`` them one at a time."""
    if len(consumer_callables) == 1:
        receive = consumer_callables[0]
        while True:
            await dispatch(await receive())
    lock = asyncio.Lock()

    async def pump(receive) -> None:  # no annotation: it would be evaluated per connection
        while True:
            message = await receive()
            async with lock:
                await dispatch(message)
            # A queue that holds many messages returns them without suspending: the loop gets a
            # turn between them, as it did with a task per message, so that what was sent goes
            # out (the outbound limit counts unsent bytes) and other connections are served.
            await asyncio.sleep(0)

    tasks = [asyncio.ensure_future(pump(receive)) for receive in consumer_callables]
    done: set = set()
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        next(iter(done)).result()  # a pump only ends by raising: raise it here
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            # The first task's exception is the one raised; the others ended by being cancelled.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # The exception raised holds this frame, whose tasks hold the exception: without this,
        # a cycle that keeps the whole consumer until the garbage collector runs.
        tasks.clear()
        done.clear()


def apply() -> bool:
    """Make every consumer use the loop above; return whether it was installed."""
    if channels.__version__ != CHANNELS_WRITTEN_FOR:
        logger.warning(
            "channels %s is not %s: consumers keep its own message loop",
            channels.__version__,
            CHANNELS_WRITTEN_FOR,
        )
        return False
    channels.consumer.await_many_dispatch = await_many_dispatch
    return True
