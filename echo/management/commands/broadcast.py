"""Send a broadcast from the command line.

Operators and scripts (a deploy hook, a cron job) push a message to every client connected
to ws/ on every Daphne process that shares the Redis, to one group of them, or to every
connection of one user. It goes
through services.broadcast_send: the push log gives it its place in the one order every
client sees, and the admin's history records it (as refused, when Redis is down).
"""

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from echo import services


class Command(BaseCommand):
    help = (
        "Send TEXT to every client connected to ws/ (or to one --group, or to every connection of one "
        "--user), on every Daphne process."
    )

    def add_arguments(self, parser):
        parser.add_argument("text", help="the message to send")
        to = parser.add_mutually_exclusive_group()
        to.add_argument(
            "--group",
            default=services.ALL_GROUP,
            help=f"send only to this group (default: {services.ALL_GROUP}, every connection)",
        )
        to.add_argument("--user", metavar="NAME", help="send only to this user's connections, every tab")

    def handle(self, *args, text: str, group: str, user: str | None, verbosity: int, **options) -> None:
        if not text.strip():
            raise CommandError("TEXT is empty: give the message to send.")
        try:
            recipient = services.find_user(user) if user is not None else None
            broadcast = services.broadcast_send(text=text, group=group, user=recipient)
            live = services.live_connections(group=group, user=recipient).count()
        except (services.InvalidGroupName, services.InvalidBroadcast, services.BroadcastNotSent) as error:
            raise CommandError(str(error)) from None
        except DatabaseError as error:
            raise CommandError(f"the database is unavailable: {error}") from None
        if verbosity >= 1:
            to = f"user {user!r}" if recipient is not None else f"group {group!r}"
            there = "of theirs" if recipient is not None else "there"
            self.stdout.write(
                self.style.SUCCESS(
                    f"Broadcast #{broadcast.position} sent to {to}; "
                    f"the registry knows {live} live connection(s) {there}."
                )
            )
