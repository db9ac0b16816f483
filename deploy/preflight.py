"""Check that the settings load and the database answers, before migrating or serving.

    .venv/bin/python -m deploy.preflight

`./dev run` and the systemd migrate unit run it first: when something is wrong it prints one
line saying what and what to do, and exits 1, where `manage.py migrate` would print a
traceback of a hundred lines.
"""

import os
import sys


def say(text: str) -> None:
    print(f"preflight: {text}", file=sys.stderr, flush=True)


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0].strip() if text else type(error).__name__


def database_address(database: dict) -> str:
    """Name the database by engine, host, port and name: never its user or password."""
    engine = database["ENGINE"].rsplit(".", 1)[-1]
    if engine == "sqlite3":
        return f"sqlite file {database['NAME']}"
    host = database.get("HOST") or "localhost"
    port = f":{database['PORT']}" if database.get("PORT") else ""
    return f"{engine} {host}{port}/{database.get('NAME', '')}"


def main() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    try:
        import django

        django.setup()
    except SystemExit as stop:
        # project/settings.py has printed what is missing; say where the variables are listed.
        if stop.code:
            say("set the variable the line above names (.env.example lists them all), then run again")
        return 1
    except Exception as error:
        say(f"the settings do not load ({first_line(error)}); check the environment against .env.example")
        return 1

    from django.conf import settings
    from django.db import connection

    try:
        connection.ensure_connection()
    except Exception as error:
        where = database_address(settings.DATABASES["default"])
        say(
            f"the database ({where}) does not answer: {first_line(error)}. "
            "Start it, or set DATABASE_URL to one that answers."
        )
        return 1
    finally:
        connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
