"""Credentials in REDIS_URL never reach a log line, an error message or the public /healthz."""

import json
import os
import string
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import websockets
from hypothesis import given, settings
from hypothesis import strategies as st

from echo.channel_layer import redacted
from tests.servers import ROOT, free_port

SECRET = "S3cretXYZ"


def test_redacted_hides_only_the_password():
    """URLs in messages keep their host and database but lose the password."""
    assert redacted("redis://user:pw@cache:6379/2") == "redis://user:***@cache:6379/2"
    assert redacted("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert redacted("redis://h:6379/0?db=2&password=pw") == "redis://h:6379/0?db=2&password=***"
    assert redacted("redis://lonesecret@h:6379/0") == "redis://***@h:6379/0"


@settings(derandomize=True, max_examples=500)  # the same cases on every run: CI is no lottery
@given(
    secret=st.text(alphabet=string.ascii_letters + string.digits + "!#$%&()*+,/:;=?@[]~-._", min_size=6),
    form=st.sampled_from(
        [
            "redis://:{}@cache:6379/0",
            "redis://user:{}@cache/1",
            "rediss://:{}@cache:6380/0",
            "redis://c/0?password={}",
        ]
    ),
)
def test_no_form_of_credential_survives_redaction(secret, form):
    """Whatever characters a password has, and wherever the URL carries it, redaction removes it."""
    url = form.format(secret)
    assert secret not in redacted(url).replace("***", "\0")


@pytest.mark.parametrize(
    "form",
    [
        "redis://:{secret}@127.0.0.1:{port}/0",
        "redis://127.0.0.1:{port}/0?password={secret}",
        "rediss://u:{secret}@127.0.0.1:{port}/0",
    ],
    ids=["userinfo", "query", "rediss"],
)
async def test_redis_down_reveals_no_credential(start_daphne, daphne_env, form):
    """With Redis down: /healthz says only "down" to the public, Daphne's warning and the command's
    error name the address without the password."""
    redis_url = form.format(secret=SECRET, port=free_port())  # nothing listens there
    server = start_daphne(REDIS_URL=redis_url)
    async with websockets.connect(server.ws_url + "/ws/?group=red", open_timeout=10) as ws:
        await ws.send("hi")
        assert await ws.recv() == "Server: Hello. You said: hi"
    log = server.wait_for_log("is unreachable", timeout=10)
    with pytest.raises(urllib.error.HTTPError) as degraded:
        urllib.request.urlopen(server.http_url + "/healthz", timeout=10)
    body = json.loads(degraded.value.read())
    assert (degraded.value.code, body) == (
        503,
        {"status": "degraded", "checks": {"database": "ok", "redis": "down"}},
    )
    command = [sys.executable, "manage.py", "broadcast", "hello"]
    env = {**os.environ, **daphne_env, "REDIS_URL": redis_url, "CHANNEL_LAYER_SEND_TIMEOUT": "3"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stderr.startswith("CommandError: Redis at "), result.stderr
    assert ":***@" in result.stderr or "password=***" in result.stderr
    assert SECRET not in log + result.stderr + result.stdout
