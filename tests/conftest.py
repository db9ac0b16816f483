import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.test import override_settings

from echo import consumers
from echo.presence import PresenceRegistry
from tests.servers import ROOT, DaphneServer, RedisServer

ADMIN_PASSWORD = "admin-password-for-live-tests"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for the whole session."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server for this test alone, to stop and start, or to count subscriptions on."""
    server = RedisServer().start()
    yield server
    server.stop()


def channel_layers_for(redis_url: str) -> dict:
    """The project's CHANNEL_LAYERS setting, pointed at another Redis."""
    default = settings.CHANNEL_LAYERS["default"]
    host = {**default["CONFIG"]["hosts"][0], "address": redis_url}
    return {"default": {**default, "CONFIG": {**default["CONFIG"], "hosts": [host]}}}


@pytest.fixture
def channel_layer_settings(redis_server: RedisServer) -> Iterator[None]:
    """Point the channel layer and the push log of this test process at the private Redis."""
    with override_settings(CHANNEL_LAYERS=channel_layers_for(redis_server.url), REDIS_URL=redis_server.url):
        yield


@pytest.fixture
async def registry(monkeypatch, settings) -> AsyncIterator[PresenceRegistry]:
    """A presence registry of the test's own, that writes only when the test flushes it."""
    settings.PRESENCE_INTERVAL = 60
    fresh = PresenceRegistry()
    monkeypatch.setattr(consumers, "registry", fresh)
    yield fresh
    await fresh.stop()


@pytest.fixture(scope="session")
def daphne_env(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Production-like settings for a live Daphne: DEBUG off, a private Redis and database."""
    database = tmp_path_factory.mktemp("db") / "live.sqlite3"
    env = {
        "DJANGO_STATIC_ROOT": str(tmp_path_factory.mktemp("static")),
        "REDIS_URL": redis_server.url,
        "DATABASE_URL": f"sqlite:///{database}",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "live-test-secret-key-that-is-long-enough-for-check-deploy-0123456789",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "LOG_LEVEL": "INFO",
        "LOG_MESSAGES": "1",
        # Fast presence, so that tests see rows come and go within seconds.
        "PRESENCE_INTERVAL": "0.5",
        "PRESENCE_STALE_AFTER": "5",
    }
    manage = [sys.executable, "manage.py"]
    superuser = {"DJANGO_SUPERUSER_PASSWORD": ADMIN_PASSWORD}
    for command in (
        ["migrate", "--noinput", "-v", "0"],
        ["collectstatic", "--noinput", "-v", "0"],
        ["createsuperuser", "--noinput", "--username", "admin", "--email", "admin@example.com"],
    ):
        subprocess.run([*manage, *command], cwd=ROOT, env={**os.environ, **env, **superuser}, check=True)
    return env


@pytest.fixture(scope="session")
def live_database(daphne_env: dict[str, str]) -> Path:
    """The SQLite file the live Daphne processes share."""
    return Path(daphne_env["DATABASE_URL"].removeprefix("sqlite:///"))


def serving(server: DaphneServer) -> Iterator[DaphneServer]:
    """Start ``server``, hand it to the test, stop it, and fail if it logged a traceback."""
    server.start()
    yield server
    server.stop()
    server.assert_no_tracebacks()


@pytest.fixture(scope="session")
def daphne(daphne_env: dict[str, str]) -> Iterator[DaphneServer]:
    """One live Daphne serving the project for the whole session."""
    yield from serving(DaphneServer(env=daphne_env))


@pytest.fixture(scope="session")
def daphne_b(daphne_env: dict[str, str]) -> Iterator[DaphneServer]:
    """A second live Daphne on another port, sharing the Redis and the database with the first."""
    yield from serving(DaphneServer(env=daphne_env))


@pytest.fixture
def start_daphne(daphne_env: dict[str, str]) -> Iterator[Callable[..., DaphneServer]]:
    """Start Daphne processes of this test's own, with settings of its own; stop them after it."""
    started: list[DaphneServer] = []

    def start(args: list[str] = (), **settings: str) -> DaphneServer:
        server = DaphneServer(env={**daphne_env, **settings}, args=args).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
    for server in started:
        server.assert_no_tracebacks()


@pytest.fixture
def fresh_daphne(start_daphne) -> DaphneServer:
    """A Daphne of this test's own, for behaviour that other tests' traffic could hide."""
    return start_daphne()
