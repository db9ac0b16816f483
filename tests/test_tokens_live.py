"""Tokens against a live Daphne: a script or a browser connects as a user, a bad token gets 403,
an expiring one is closed with 4001, and no log line ever holds a token."""

import asyncio
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import websockets

from tests.servers import ROOT, DaphneServer
from tests.test_push_live import admin_opener

USER = "token-user"


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """Run manage.py with the live servers' settings (their database, their SECRET_KEY)."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def user(daphne_env: dict[str, str]) -> str:
    """A plain user in the live database."""
    code = (
        "from django.contrib.auth.models import User; "
        f"User.objects.filter(username={USER!r}).exists() or "
        f"User.objects.create_user({USER!r}, password='x-1')"
    )
    manage(daphne_env, "shell", "--no-imports", "-c", code).check_returncode()
    return USER


@pytest.fixture(scope="module")
def token(daphne_env: dict[str, str], user: str) -> str:
    """A token for ``user`` that lives an hour (TOKEN_TTL), from the command."""
    return issue(daphne_env, user)


def issue(env: dict[str, str], name: str, ttl: int | None = None) -> str:
    """Issue a token with the command, as an operator would: TOKEN=$(manage.py token NAME)."""
    result = manage(env, "token", name, *(["--ttl", str(ttl)] if ttl else []))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1 and result.stderr.startswith("expires at ")
    return result.stdout.strip()


def flipped(token: str) -> str:
    return token[:5] + ("A" if token[5] != "A" else "B") + token[6:]


async def welcome(server: DaphneServer, *, header: str | None = None, subprotocols=("echo.json",), **kwargs):
    """Connect to ws/ with echo.json and return the connection and its welcome envelope."""
    headers = {"Authorization": f"Bearer {header}"} if header else {}
    ws = await websockets.connect(
        server.ws_url + "/ws/", subprotocols=list(subprotocols), additional_headers=headers, **kwargs
    )
    return ws, json.loads(await ws.recv())


async def refused(server: DaphneServer, **kwargs) -> tuple[int, str]:
    """Return the status and body a handshake is refused with."""
    with pytest.raises(websockets.InvalidStatus) as refusal:
        ws, _ = await welcome(server, **kwargs)
        await ws.close()
    return refusal.value.response.status_code, refusal.value.response.body.decode()


async def test_a_token_client_connects_as_its_user(daphne, token, user):
    """Authorization: Bearer on the handshake: the welcome names the token's user."""
    ws, hello = await welcome(daphne, header=token)
    async with ws:
        assert hello["type"] == "welcome" and hello["user"] == user
        await ws.send(json.dumps({"type": "echo", "text": "hi"}))
        assert json.loads(await ws.recv()) == {"type": "echo", "text": "Server: Hello. You said: hi"}


async def test_the_subprotocol_form_selects_echo_json_never_the_token(daphne, token, user):
    """A browser's form, ["echo.json", "bearer." + token]: the server answers with echo.json alone."""
    ws, hello = await welcome(daphne, subprotocols=["echo.json", f"bearer.{token}"])
    async with ws:
        assert hello["user"] == user
        assert ws.subprotocol == "echo.json"
        assert ws.response.headers.get_all("Sec-WebSocket-Protocol") == ["echo.json"]


async def test_a_token_wins_over_a_session_cookie(daphne, token, user):
    """The admin's session cookie beside a user's token: the connection is the token's user."""
    _, jar = admin_opener(daphne)
    cookie = next(f"{c.name}={c.value}" for c in jar if c.name == "sessionid")
    headers = {"Authorization": f"Bearer {token}", "Cookie": cookie}
    async with websockets.connect(
        daphne.ws_url + "/ws/", subprotocols=["echo.json"], additional_headers=headers
    ) as ws:
        assert json.loads(await ws.recv())["user"] == user


async def test_forged_and_malformed_tokens_get_403(daphne, daphne_env, user, token):
    """A changed character, another SECRET_KEY, junk: 403 at the handshake, with the reason."""
    other_key = issue({**daphne_env, "DJANGO_SECRET_KEY": "another-key-" + "x" * 60}, user)
    for bad, why in [(flipped(token), "bad signature"), (other_key, "bad signature"), ("junk", "malformed")]:
        for kwargs in ({"header": bad}, {"subprotocols": ["echo.json", f"bearer.{bad}"]}):
            assert await refused(daphne, **kwargs) == (403, f"Token refused: {why}.\n")


async def test_an_expiring_connection_is_closed_with_4001_and_the_token_is_then_refused(
    daphne, daphne_env, user
):
    """A 2-second token: ws/ and ws/raw/ are closed with 4001 "token expired"; a new handshake gets 403."""
    token = issue(daphne_env, user, ttl=2)
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        websockets.connect(daphne.ws_url + "/ws/", additional_headers=headers) as plain,
        websockets.connect(daphne.ws_url + "/ws/raw/", additional_headers=headers) as raw,
    ):
        await raw.send("still here")
        assert await raw.recv() == "still here"
        for ws in (plain, raw):
            with pytest.raises(websockets.ConnectionClosedError):
                await asyncio.wait_for(ws.recv(), timeout=5)
            assert (ws.close_code, ws.close_reason) == (4001, "token expired")
    assert await refused(daphne, header=token) == (403, "Token refused: expired.\n")


async def test_the_endpoint_issues_tokens_to_a_signed_in_session_only(daphne):
    """POST /token with the admin's session and CSRF token: a token that connects as admin."""
    opener, jar = admin_opener(daphne)
    csrf = next(c.value for c in jar if c.name == "csrftoken")
    request = urllib.request.Request(
        daphne.http_url + "/token",
        data=json.dumps({"ttl": 120}).encode(),
        headers={"X-CSRFToken": csrf, "Content-Type": "application/json", "Referer": daphne.http_url + "/"},
    )
    body = json.loads(await asyncio.to_thread(lambda: opener.open(request, timeout=10).read()))
    assert body["ttl"] == 120
    ws, hello = await welcome(daphne, header=body["token"])
    async with ws:
        assert hello["user"] == "admin"
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        await asyncio.to_thread(lambda: urllib.request.urlopen(daphne.http_url + "/token", b"", timeout=10))
    assert anonymous.value.code == 403
    assert "sign in first" in json.loads(anonymous.value.read())["error"]


async def test_the_readme_script_connects_with_a_token(daphne, token, user):
    """The README's script, run as it is, with TOKEN and ECHO_URL in its environment."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Tokens for scripts and apps") :]
    script = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    env = {**os.environ, "TOKEN": token, "ECHO_URL": daphne.ws_url + "/ws/"}
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"connected as {user}\nServer: Hello. You said: hi\n"


def test_the_command_refuses_an_unknown_user_in_one_line(daphne_env):
    result = manage(daphne_env, "token", "nobody-at-all")
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr == "CommandError: no user named 'nobody-at-all'\n"


async def test_no_log_line_holds_a_token(fresh_daphne, daphne_env, user, token):
    """Tokens accepted, refused and expired, by header and subprotocol: the log names peers and
    reasons, Daphne's access log the paths, and no line holds any token or half of one."""
    server = fresh_daphne
    good, short = token, issue(daphne_env, user, ttl=1)
    ws, _ = await welcome(server, header=good)
    await ws.close()
    ws, _ = await welcome(server, subprotocols=["echo.json", f"bearer.{good}"])
    await ws.close()
    await asyncio.sleep(2.1)
    presented = [flipped(good), short, "junk-without-a-signature-4711"]
    for bad in presented:
        await refused(server, header=bad)
        await refused(server, subprotocols=["echo.json", f"bearer.{bad}"])
    log = server.wait_for_log("token refused: malformed")
    lines = [line for line in log.splitlines() if "token refused" in line]
    assert len(lines) == 6
    assert all("WARNING echo.auth handshake rejected peer=127.0.0.1:" in line for line in lines)
    for why in ("bad signature", "expired", "malformed"):
        assert sum(line.endswith(f"path=/ws/: token refused: {why}") for line in lines) == 2
    assert log.count('"WSREJECT /ws/"') == 6 and log.count('"WSCONNECT /ws/"') == 2
    for shown in [good, *presented]:
        for part in (shown, *shown.split(".")):
            assert part not in log
