"""Settings of the stock stack the benchmark compares against (bench/stock_asgi.py).

What the Channels tutorial sets up: channels_redis's RedisChannelLayer on REDIS_URL with its
defaults, Django's auth and sessions, DEBUG off, no project code.
"""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "stock-stack-benchmark-only")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = [
    "daphne",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "channels",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
ASGI_APPLICATION = "bench.stock_asgi.application"
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")]},
    }
}
USE_TZ = True
