"""Settings from the environment, and the plain HTTP side of the app."""

import os
import socket
import subprocess
import sys
import uuid

import pytest
from django.test import Client

from tests.servers import ROOT


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_URL"))}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_refuses_to_start_without_a_secret_key():
    """DJANGO_DEBUG=0 with no DJANGO_SECRET_KEY exits non-zero with one line, no traceback."""
    result = manage("check", env={"DJANGO_DEBUG": "0"})
    assert result.returncode != 0
    assert result.stderr.strip() == "DJANGO_SECRET_KEY must be set when DJANGO_DEBUG=0."
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("name", "value", "line"),
    [
        ("EVENT_LOOP", "trio", "EVENT_LOOP must be uvloop or asyncio, not 'trio'."),
    ],
)
def test_an_unknown_choice_is_refused_in_one_line(name, value, line):
    result = manage("check", env={name: value})
    assert result.returncode == 2
    assert result.stderr.strip() == line


def test_settings_follow_the_environment():
    """DJANGO_ALLOWED_HOSTS, DJANGO_DEBUG, DATABASE_URL and REDIS_URL are read from the environment."""
    code = (
        "from django.conf import settings as s; "
        "print(s.DEBUG, s.ALLOWED_HOSTS, s.DATABASES['default']['ENGINE'], "
        "s.CHANNEL_LAYERS['default']['CONFIG']['hosts'][0]['address'])"
    )
    result = manage(
        "shell",
        "--no-imports",
        "-c",
        code,
        env={
            "DJANGO_DEBUG": "0",
            "DJANGO_SECRET_KEY": "k" * 50,
            "DJANGO_ALLOWED_HOSTS": "a.example, b.example",
            "DATABASE_URL": "postgres://u:p@db.example:5432/echo",
            "REDIS_URL": "redis://cache.example:6380/2",
        },
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == (
        "False ['a.example', 'b.example'] django.db.backends.postgresql redis://cache.example:6380/2"
    )


def postgres_answers() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not postgres_answers(), reason="no PostgreSQL on 127.0.0.1:5432")
def test_migrations_run_on_postgresql_when_given():
    """DATABASE_URL pointing at PostgreSQL works: a throwaway database migrates cleanly."""
    import psycopg

    name = f"echo_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            result = manage(
                "migrate", "--noinput", env={"DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{name}"}
            )
            assert result.returncode == 0, result.stderr
            assert "Applying auth.0001_initial... OK" in result.stdout
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.mark.parametrize("path", ["/ws/", "/ws/raw/"])
def test_plain_get_on_a_websocket_route_is_400_with_one_line(path):
    """A plain GET where a WebSocket belongs says, in one line, that an upgrade is required."""
    response = Client().get(path)
    assert response.status_code == 400
    body = response.content.decode()
    assert body.count("\n") == 1 and "WebSocket upgrade is required" in body
    assert response["Content-Type"].startswith("text/plain")


@pytest.mark.django_db
def test_index_page_has_a_text_box():
    """The page at / offers a text box and loads the client script."""
    response = Client().get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert '<input id="message"' in html and "echo/chat.js" in html


def test_deploy_checks_are_clean_with_the_documented_production_settings():
    """DJANGO_DEBUG=0, a strong key, host names and DJANGO_HTTPS=1: check --deploy finds nothing."""
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        env={
            "DJANGO_DEBUG": "0",
            "DJANGO_SECRET_KEY": "x7#Qp9!vL2@mZ4$wR8^tY6&uI0*oP3(aS5)dF1-gH7+jK9=lZ2_xC4",
            "DJANGO_ALLOWED_HOSTS": "echo.example.com",
            "DJANGO_HTTPS": "1",
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
