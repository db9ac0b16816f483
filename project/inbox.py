"""A connection's inbox: an unbounded queue with one reader, in a fraction of asyncio.Queue's memory.

Every WebSocket connection has two queues, Daphne's (what the client sent) and the channel
layer's (what the server pushes). asyncio.Queue keeps three deques and an Event (a fourth deque)
for waiting putters, several getters and ``join()``, none of which a connection uses: about 3 KB
each, with a 64-slot block per deque, a fifth of an idle connection's traced memory (tracemalloc).
An Inbox keeps two lists (items come in on one and go out, reversed, from the other: each item
moves once) and at most one waiting reader: about 250 bytes.
"""

import asyncio


class Inbox:
    """What asyncio.Queue offers a single reader: ``put_nowait``, ``get``, ``qsize``, ``empty``."""

    __slots__ = ("incoming", "outgoing", "waiter")

    def __init__(self) -> None:
        self.incoming: list = []
        self.outgoing: list = []  # the oldest item last
        self.waiter: asyncio.Future | None = None

    def put_nowait(self, item) -> None:
        """Add ``item``; wake the reader if it waits."""
        self.incoming.append(item)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self):
        """Return the oldest item, waiting for one if there is none."""
        while not (self.outgoing or self.incoming):
            if self.waiter is not None:
                raise RuntimeError("an Inbox has one reader: get() is already waiting")
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        if not self.outgoing:
            self.incoming.reverse()
            self.outgoing, self.incoming = self.incoming, []
        return self.outgoing.pop()

    def qsize(self) -> int:
        return len(self.incoming) + len(self.outgoing)

    def empty(self) -> bool:
        return not (self.incoming or self.outgoing)
