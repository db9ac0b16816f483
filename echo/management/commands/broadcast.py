"""Send a broadcast from the command line.

Operators and scripts (a deploy hook, a cron job) push a message to every client connected
to ws/ on every Daphne process that shares the Redis, or to one group of them. It goes
through services.broadcast_send: the push log gives it its place in the one order every
client sees, and the admin's history records it (as refused, when Redis is down).
"""

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from echo import services


class Command(BaseCommand):
    help = "Send TEXT to every client connected to ws/ (or to one --group), on every Daphne process."

    def add_arguments(self, parser):
        parser.add_argument("text", help="the message to send")
        parser.add_argument(
            "--group",
            default=services.ALL_GROUP,
            help=f"send only to this group (default: {services.ALL_GROUP}, every connection)",
        )

    def handle(self, *args, text: str, group: str, verbosity: int, **options) -> None:
        if not text.strip():
            raise CommandError("TEXT is empty: give the message to send.")
        try:
            broadcast = services.broadcast_send(text=text, group=group)
            live = services.live_connections(group=group).count()
        except (services.InvalidGroupName, services.InvalidBroadcast, services.BroadcastNotSent) as error:
            raise CommandError(str(error)) from None
        except DatabaseError as error:
            raise CommandError(f"the database is unavailable: {error}") from None
        if verbosity >= 1:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Broadcast #{broadcast.position} sent to group {group!r}; "
                    f"the registry knows {live} live connection(s) there."
                )
            )
