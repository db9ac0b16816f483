"""Health checks: can this process reach what it depends on?"""

import redis
from django.conf import settings
from django.db import connection

from echo.channel_layer import redacted
from echo.services import describe_error

# A health check must answer quickly even when a dependency hangs.
CHECK_TIMEOUT = 1.0


def check_database() -> str | None:
    """Return None if the database answers a query, else what went wrong."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as error:
        return f"unreachable ({describe_error(error)})"
    return None


def check_redis() -> str | None:
    """Return None if Redis answers PING, else what went wrong."""
    client = redis.Redis.from_url(
        settings.REDIS_URL, socket_connect_timeout=CHECK_TIMEOUT, socket_timeout=CHECK_TIMEOUT
    )
    try:
        client.ping()
    except Exception as error:
        return f"unreachable at {redacted(settings.REDIS_URL)} ({describe_error(error)})"
    finally:
        client.close()
    return None


def health() -> dict[str, str]:
    """Return each dependency's state: "ok" or what is wrong with it."""
    checks = {"database": check_database, "redis": check_redis}
    return {name: check() or "ok" for name, check in checks.items()}
