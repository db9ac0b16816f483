"""What every benchmark sets up: enough file descriptors, and the environment of a fresh project."""

import os
import resource
import secrets
import subprocess
import sys
import tempfile

from tests.servers import ROOT


def raise_file_limit() -> None:
    """Allow as many open sockets as the machine lets this process have."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def project_env(redis_url: str, **settings: str) -> dict[str, str]:
    """Return production settings for a Daphne on ``redis_url`` and a new, migrated SQLite file."""
    database = os.path.join(tempfile.mkdtemp(prefix="bench-db-"), "bench.sqlite3")
    env = {
        "REDIS_URL": redis_url,
        "DATABASE_URL": f"sqlite:///{database}",
        # As in production: no debug (Django records every SQL query with it on).
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        # The load comes from one address by design.
        "WEBSOCKET_MAX_PER_ADDRESS": "0",
        **settings,
    }
    command = [sys.executable, "manage.py", "migrate", "-v", "0"]
    subprocess.run(command, cwd=ROOT, env={**os.environ, **env}, check=True)
    return env
