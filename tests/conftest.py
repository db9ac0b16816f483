import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.test import override_settings

from tests.servers import ROOT, DaphneServer, RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for the whole session."""
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
    """Point the channel layer of this test process at the private Redis."""
    with override_settings(CHANNEL_LAYERS=channel_layers_for(redis_server.url)):
        yield


@pytest.fixture(scope="session")
def daphne_env(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Production-like settings for a live Daphne: DEBUG off, a private Redis and database."""
    database = tmp_path_factory.mktemp("db") / "live.sqlite3"
    env = {
        "REDIS_URL": redis_server.url,
        "DATABASE_URL": f"sqlite:///{database}",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "live-test-secret-key-that-is-long-enough-for-check-deploy-0123456789",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "LOG_LEVEL": "INFO",
        "LOG_MESSAGES": "1",
    }
    manage = [sys.executable, "manage.py"]
    for command in (["migrate", "--noinput", "-v", "0"], ["collectstatic", "--noinput", "-v", "0"]):
        subprocess.run([*manage, *command], cwd=ROOT, env={**os.environ, **env}, check=True)
    return env


@pytest.fixture(scope="session")
def daphne(daphne_env: dict[str, str]) -> Iterator[DaphneServer]:
    """One live Daphne serving the project for the whole session."""
    server = DaphneServer(env=daphne_env).start()
    yield server
    server.stop()


@pytest.fixture
def fresh_daphne(daphne_env: dict[str, str]) -> Iterator[DaphneServer]:
    """A Daphne of this test's own, for behaviour that other tests' traffic could hide."""
    server = DaphneServer(env=daphne_env).start()
    yield server
    server.stop()
