"""Settings for the echo project, read from the environment (see .env.example and the README)."""

import os
import sys
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    """Read a 1/0 (or true/false, yes/no) flag from the environment."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


DEBUG = env_bool("DJANGO_DEBUG", True)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        # One line, no traceback: production must not run on a key everyone knows.
        sys.stderr.write("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG=0.\n")
        raise SystemExit(2)
    SECRET_KEY = "django-insecure-development-key-do-not-use-in-production"

ALLOWED_HOSTS = [
    host.strip()
    for host in os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")
    if host.strip()
]

# Production behind HTTPS (Daphne's TLS endpoint or a proxy that terminates TLS): secure
# cookies, HSTS, and a redirect from http. With it, `manage.py check --deploy` is clean.
HTTPS = env_bool("DJANGO_HTTPS", False)
if HTTPS:
    SECURE_SSL_REDIRECT = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    CSRF_TRUSTED_ORIGINS = [f"https://{host}" for host in ALLOWED_HOSTS if host not in {"*"}]
    # Health probes and scrapers talk to each process's own port over plain http.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]
# Set when a proxy in front terminates TLS and sends X-Forwarded-Proto (run Daphne with
# --proxy-headers too, so that client addresses are the real ones).
if env_bool("DJANGO_BEHIND_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    # django-ninja: the HTTP API (echo/api.py); listed so that its docs page uses local files, no CDN.
    "ninja",
    "echo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = None
ASGI_APPLICATION = "project.asgi.application"

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        # Kept open between queries (checked before reuse): opening a PostgreSQL connection per
        # query was 65% of the database thread's time under connection churn.
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 600),
        conn_health_checks=True,
    )
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT") or BASE_DIR / "staticfiles")
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
# Serve straight from the app and project static folders, so a fresh checkout
# needs no collectstatic step to show the admin styled with DJANGO_DEBUG=0.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis channel layer -------------------------------------------------------------

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

# redis-py 8 gives every socket a 5 s read timeout, which killed channels_redis's 5 s blocking
# pop (idle consumers died with 1011); a longer one keeps long reads safe.
REDIS_CONNECTION_OPTIONS = {
    "socket_timeout": 15,
    "socket_connect_timeout": 3,
    "health_check_interval": 30,
}
# Redis Sentinel, for failover: the sentinels ("host:port,host:port") and the name they
# monitor. With them, REDIS_URL's host is not used.
REDIS_SENTINELS = [
    (address.rpartition(":")[0], int(address.rpartition(":")[2]))
    for address in os.environ.get("REDIS_SENTINELS", "").split(",")
    if address.strip()
]
REDIS_MASTER_NAME = os.environ.get("REDIS_MASTER_NAME", "mymaster")
# Replicas that must confirm a push before its sender is told it was sent (Redis WAIT); 0 with
# a single Redis. With an asynchronous replica and 0, a failover can lose the newest pushes.
REDIS_WAIT_REPLICAS = env_int("REDIS_WAIT_REPLICAS", 1 if REDIS_SENTINELS else 0)

# The channel layer (echo/channel_layer.py): channels_redis's pub/sub layer, one subscriber
# connection per process and no pool to exhaust.
if REDIS_SENTINELS:
    CHANNEL_LAYER_HOST = {
        "sentinels": REDIS_SENTINELS,
        "master_name": REDIS_MASTER_NAME,
        **REDIS_CONNECTION_OPTIONS,
    }
else:
    CHANNEL_LAYER_HOST = {"address": REDIS_URL, **REDIS_CONNECTION_OPTIONS}

# The push log (echo/pushlog.py): one Redis Stream holding the newest PUSH_LOG_LENGTH pushes,
# which every process tails and reconnecting clients resume from.
PUSH_LOG_KEY = os.environ.get("PUSH_LOG_KEY", "echo:pushes")
PUSH_LOG_LENGTH = env_int("PUSH_LOG_LENGTH", 10000)

# The event loop Daphne's Twisted reactor runs on: "uvloop" (the default, faster: README,
# Performance) or "asyncio" (Python's own, as stock Daphne).
EVENT_LOOP = os.environ.get("EVENT_LOOP", "uvloop")
if EVENT_LOOP not in ("uvloop", "asyncio"):
    sys.stderr.write(f"EVENT_LOOP must be uvloop or asyncio, not {EVENT_LOOP!r}.\n")
    raise SystemExit(2)

# Messages a consumer may have waiting in the layer; past that they are dropped, counted,
# logged, and the connection is closed with 1013 so that its client resumes them.
CHANNEL_CAPACITY = env_int("CHANNEL_CAPACITY", 500)

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "echo.channel_layer.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [CHANNEL_LAYER_HOST], "capacity": CHANNEL_CAPACITY},
    },
}

# --- WebSocket limits ----------------------------------------------------------------

# Largest message (and frame) the server accepts, in bytes; a larger one is closed with 1009.
WEBSOCKET_MAX_MESSAGE_SIZE = env_int("WEBSOCKET_MAX_MESSAGE_SIZE", 1024 * 1024)
# Seconds a client has to send a request's headers (the WebSocket handshake included);
# one that trickles them (slowloris) is dropped.
HTTP_HEADER_TIMEOUT = float(os.environ.get("HTTP_HEADER_TIMEOUT", "10"))
# Bytes that may wait unsent to one client; past that it has stopped reading and is closed
# with 1013 (it resumes what it missed on reconnect). 0: no limit (Daphne's own behaviour).
WEBSOCKET_OUTBOUND_LIMIT = env_int("WEBSOCKET_OUTBOUND_LIMIT", 256 * 1024)
# Messages a connection may send a second on average, and in a burst; past that it is
# closed with 1008. A person typing never comes near; a script flooding does. 0: no limit.
WEBSOCKET_RATE = float(os.environ.get("WEBSOCKET_RATE", "20"))
WEBSOCKET_BURST = env_int("WEBSOCKET_BURST", 60)
# WebSockets one client address may hold at once, and one process in all (by default its
# open-file limit, raised to the hard limit at start, less a reserve); past either the
# handshake gets 503. Behind a proxy, run Daphne with --proxy-headers so that the address is
# the client's. 0: no limit.
WEBSOCKET_MAX_PER_ADDRESS = env_int("WEBSOCKET_MAX_PER_ADDRESS", 1000)
WEBSOCKET_MAX_CONNECTIONS = env_int("WEBSOCKET_MAX_CONNECTIONS", -1)
if WEBSOCKET_MAX_CONNECTIONS < 0:
    WEBSOCKET_MAX_CONNECTIONS = None  # project.daphne_limits derives it from the descriptor limit

# permessage-deflate (project/daphne_deflate.py): "off" (the default: README, Performance), "on"
# (context takeover, 12-bit window, memory level 5) or "no-context-takeover" (each message on its
# own); messages shorter than WEBSOCKET_COMPRESSION_MIN_SIZE bytes go uncompressed (128: a
# connection that got only its welcome and presence counts keeps no compressor).
WEBSOCKET_COMPRESSION = os.environ.get("WEBSOCKET_COMPRESSION", "").strip().lower() or "off"
if WEBSOCKET_COMPRESSION not in ("off", "on", "no-context-takeover"):
    sys.stderr.write(
        f"WEBSOCKET_COMPRESSION must be off, on or no-context-takeover, not {WEBSOCKET_COMPRESSION!r}.\n"
    )
    raise SystemExit(2)
WEBSOCKET_COMPRESSION_MIN_SIZE = env_int("WEBSOCKET_COMPRESSION_MIN_SIZE", 128)

# --- Operations ----------------------------------------------------------------------

# /metrics is for signed-in staff unless this opens it (for a scraper on a private network).
METRICS_PUBLIC = env_bool("METRICS_PUBLIC", False)

# --- Tokens (echo/tokens.py) -----------------------------------------------------------

# Seconds a token lives when no ttl is asked for, and the longest a ttl may be.
TOKEN_TTL = env_int("TOKEN_TTL", 3600)
TOKEN_MAX_TTL = env_int("TOKEN_MAX_TTL", 86400)
if not 1 <= TOKEN_TTL <= TOKEN_MAX_TTL:
    sys.stderr.write(f"TOKEN_TTL must be between 1 and TOKEN_MAX_TTL ({TOKEN_MAX_TTL}), not {TOKEN_TTL}.\n")
    raise SystemExit(2)

# --- Logging -------------------------------------------------------------------------

LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO").upper()
# One line per message received and sent is costly under load (see README, Logging);
# those lines go to their own logger, off unless LOG_MESSAGES=1.
LOG_MESSAGES = env_bool("LOG_MESSAGES", False)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "filters": {
        "one_line_warning": {"()": "project.log_filters.OneLineWarning"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "echo": {"level": LOG_LEVEL},
        "echo.messages": {"level": LOG_LEVEL if LOG_MESSAGES else "WARNING"},
        "project": {"level": LOG_LEVEL},
        "django": {"level": LOG_LEVEL if LOG_LEVEL != "DEBUG" else "INFO"},
        # Anyone can send a foreign Host header; the 400 it gets is the answer, not an error.
        "django.security.DisallowedHost": {"filters": ["one_line_warning"]},
    },
}

# --- Broadcasts and presence ---------------------------------------------------------

# How long a broadcast may take to reach Redis before the sender is told it failed.
CHANNEL_LAYER_SEND_TIMEOUT = env_int("CHANNEL_LAYER_SEND_TIMEOUT", 5)
# Each process writes its connections to the database and proves it is alive this often;
# JSON clients get the online count at most this often.
PRESENCE_INTERVAL = float(os.environ.get("PRESENCE_INTERVAL", "2"))
# A process silent for this long is taken for dead, and its connections are removed.
PRESENCE_STALE_AFTER = env_int("PRESENCE_STALE_AFTER", 30)

# Who may "say" in a room (echo.json): "users" (signed-in users only) or "anyone" (guests too).
ROOM_SPEAKERS = os.environ.get("ROOM_SPEAKERS", "").strip().lower() or "users"
if ROOM_SPEAKERS not in ("users", "anyone"):
    sys.stderr.write(f"ROOM_SPEAKERS must be users or anyone, not {ROOM_SPEAKERS!r}.\n")
    raise SystemExit(2)
