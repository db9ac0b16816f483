"""Health checks: can this process reach what it depends on?"""

import logging
import threading
import time

import redis
import redis.sentinel
from django.conf import settings
from django.db import connection

from echo.pushlog import redis_address
from echo.services import describe_error

logger = logging.getLogger(__name__)

# A health check must answer quickly even when a dependency hangs.
CHECK_TIMEOUT = 1.0

# When each dependency this process saw down went down (time.monotonic()); absent when it is up.
_down_since: dict[str, float] = {}
_lock = threading.Lock()


def check_database() -> str | None:
    """Return None if the database answers a query, else what went wrong."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as error:
        return f"unreachable ({describe_error(error)})"
    return None


def check_redis() -> str | None:
    """Return None if Redis (the primary the sentinels name, with Sentinel) answers PING, else what
    went wrong."""
    timeouts = {"socket_connect_timeout": CHECK_TIMEOUT, "socket_timeout": CHECK_TIMEOUT}
    if settings.REDIS_SENTINELS:
        sentinel = redis.sentinel.Sentinel(settings.REDIS_SENTINELS, sentinel_kwargs=timeouts, **timeouts)
        client = sentinel.master_for(settings.REDIS_MASTER_NAME, **timeouts)
    else:
        client = redis.Redis.from_url(settings.REDIS_URL, **timeouts)
    try:
        client.ping()
    except Exception as error:
        return f"unreachable at {redis_address()} ({describe_error(error)})"
    finally:
        client.close()
    return None


def health() -> dict[str, str]:
    """Return each dependency's state: "ok" or what is wrong with it."""
    checks = {"database": check_database, "redis": check_redis}
    return {name: check() or "ok" for name, check in checks.items()}


def log_changes(checks: dict[str, str]) -> None:
    """Log a dependency going down, and coming back, once each: not once per probe.

    A load balancer probes /healthz every second or so; an outage is one WARNING when the
    first probe sees it and one when a probe sees it end.
    """
    now = time.monotonic()
    with _lock:
        for name, state in checks.items():
            since = _down_since.get(name)
            if state != "ok" and since is None:
                _down_since[name] = now
                logger.warning("health check: %s is down: %s", name, state)
            elif state == "ok" and since is not None:
                del _down_since[name]
                logger.warning("health check: %s is up again after %.1f s", name, now - since)
