"""Issue a token with which a script or an app connects to ws/ as a user (echo/tokens.py).

The token alone goes to stdout, so that ``TOKEN=$(python manage.py token alice)`` works; its
expiry goes to stderr.
"""

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from echo import services, tokens


class Command(BaseCommand):
    help = (
        "Print a signed token for user NAME: present it on a WebSocket handshake as "
        "'Authorization: Bearer TOKEN', or as the subprotocol entry 'bearer.TOKEN'."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", metavar="NAME", help="the user the token connects as")
        # A string, checked by tokens.check_ttl: a bad value then gets one line, not argparse's usage.
        parser.add_argument("--ttl", metavar="SECONDS", help="seconds the token lives (default: TOKEN_TTL)")

    def handle(self, *args, name: str, ttl: str | None, **options) -> None:
        try:
            seconds = tokens.check_ttl(ttl)
            user = services.find_user(name)
        except (tokens.InvalidTTL, services.InvalidBroadcast) as error:
            raise CommandError(str(error)) from None
        except DatabaseError as error:
            raise CommandError(f"the database is unavailable: {error}") from None
        if not user.is_active:
            raise CommandError(f"user {user.get_username()!r} is inactive: a token would be refused")
        token, expires_at = tokens.issue(user, seconds)
        self.stdout.write(token)
        self.stderr.write(
            f"expires at {expires_at.isoformat()} (in {seconds} s)", style_func=lambda text: text
        )
