"""Presence: this process's live connections, mirrored to the database in batches.

Connects and closes only touch memory; every ``PRESENCE_INTERVAL`` seconds one task per
process writes what changed, refreshes the process's heartbeat, removes the rows of
processes whose heartbeat is older than ``PRESENCE_STALE_AFTER`` (one killed with -9),
and tells the connections that want it how many are online, if that changed. So a burst
of a thousand connects costs a few bulk writes and at most one count frame per
connection per interval.
"""

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import connection as db_connection
from django.utils import timezone

from echo.models import Connection, ServerProcess

logger = logging.getLogger(__name__)

OnlineListener = Callable[[int], Awaitable[None]]


class PresenceRegistry:
    """The live connections of this process and the task that reports them."""

    def __init__(self) -> None:
        self.process_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.listeners: dict[str, OnlineListener | None] = {}
        self.added: dict[str, dict] = {}
        self.removed: set[str] = set()
        self.updated: dict[str, dict] = {}
        self.online: int | None = None
        self.task: asyncio.Task | None = None
        self.failing = False

    def add(self, connection_id: str, row: dict, on_online: OnlineListener | None = None) -> None:
        """Count a new connection in; ``on_online`` is called with the online count when it changes."""
        self.listeners[connection_id] = on_online
        self.added[connection_id] = row
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self.run(), name="presence")

    def update(self, connection_id: str, **fields) -> None:
        """Change what is recorded of a live connection (its groups)."""
        if connection_id in self.added:
            self.added[connection_id].update(fields)
        elif connection_id in self.listeners:
            self.updated.setdefault(connection_id, {}).update(fields)

    def remove(self, connection_id: str) -> None:
        """Count a connection out."""
        self.listeners.pop(connection_id, None)
        self.updated.pop(connection_id, None)
        if self.added.pop(connection_id, None) is None:
            self.removed.add(connection_id)

    async def run(self) -> None:
        """Report every interval while this process has connections, then once more and stop."""
        while True:
            await asyncio.sleep(settings.PRESENCE_INTERVAL)
            await self.flush()
            if not (self.listeners or self.added or self.updated or self.removed):
                return

    async def flush(self) -> None:
        """Write what changed since the last flush, and pass the new online count on."""
        added, updated, removed = self.added, self.updated, self.removed
        self.added, self.updated, self.removed = {}, {}, set()
        try:
            online = await database_sync_to_async(self.write)(added, updated, removed, bool(self.listeners))
        except Exception as error:
            # Keep the changes for the next attempt; say so once per outage, not per interval.
            self.added = {**added, **self.added}
            self.updated = {**updated, **self.updated}
            self.removed |= removed
            for never_written in self.added.keys() & self.removed:
                del self.added[never_written]
                self.removed.discard(never_written)
            if not self.failing:
                logger.warning("presence not written, will retry: %s", error)
            self.failing = True
            return
        if self.failing:
            logger.warning("presence written again")
            self.failing = False
        if online != self.online:
            self.online = online
            for listener in list(self.listeners.values()):
                if listener is not None:
                    await listener(online)

    def write(self, added: dict[str, dict], updated: dict[str, dict], removed: set[str], alive: bool) -> int:
        """Apply the changes, beat the heart (or retire the process), reap the dead; return the count."""
        now = timezone.now()
        stale = now - timedelta(seconds=settings.PRESENCE_STALE_AFTER)
        if alive:
            ServerProcess.objects.update_or_create(id=self.process_id, defaults={"last_seen": now})
        if removed:
            Connection.objects.filter(id__in=removed).delete()
        if added:
            rows = [Connection(id=key, process_id=self.process_id, **row) for key, row in added.items()]
            Connection.objects.bulk_create(rows, ignore_conflicts=True)
        for connection_id, fields in updated.items():
            Connection.objects.filter(id=connection_id).update(**fields)
        if not alive:
            ServerProcess.objects.filter(id=self.process_id).delete()
        reaped, _ = ServerProcess.objects.filter(last_seen__lt=stale).delete()
        if reaped:
            logger.info("presence: removed the rows of processes silent since %s", stale.isoformat())
        return Connection.objects.filter(process__last_seen__gte=stale).count()

    async def shutdown(self) -> None:
        """Remove this process and its connections from the database: it is going away."""
        await self.stop()
        # A thread of its own: the shared database thread may still be busy with the write
        # that stop() interrupted, and waiting for it from here would deadlock.
        await sync_to_async(self.retire, thread_sensitive=False)()
        logger.info("presence: process %s retired", self.process_id)

    def retire(self) -> None:
        try:
            ServerProcess.objects.filter(id=self.process_id).delete()
        finally:
            db_connection.close()

    async def stop(self) -> None:
        """Cancel the reporting task (tests, shutdown)."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.task = None


registry = PresenceRegistry()
