"""A handshake that carries a session cookie must come from the site's own origin (live Daphne)."""

import json

import pytest
import websockets

from tests.test_push_live import admin_opener


def session_cookie(daphne) -> str:
    _, jar = admin_opener(daphne)
    return next(f"{cookie.name}={cookie.value}" for cookie in jar if cookie.name == "sessionid")


async def welcome_user(daphne, **headers) -> str | None:
    extra = {name: value for name, value in headers.items() if name != "origin"}
    async with websockets.connect(
        daphne.ws_url + "/ws/",
        subprotocols=["echo.json"],
        origin=headers.get("origin"),
        additional_headers=extra,
    ) as ws:
        return json.loads(await ws.recv())["user"]


@pytest.mark.parametrize(
    "origin",
    ["http://127.0.0.1:9999", "https://127.0.0.1:{port}", "http://localhost:{port}", "http://127.0.0.1"],
    ids=["other-port", "other-scheme", "other-allowed-host", "default-port"],
)
async def test_a_signed_in_handshake_from_another_origin_is_refused(daphne, origin):
    """The staff's cookie sent by a page on another port, scheme or host of the site: 403, logged."""
    cookie = session_cookie(daphne)
    origin = origin.format(port=daphne.port)
    with pytest.raises(websockets.InvalidStatus) as refused:
        await welcome_user(daphne, origin=origin, Cookie=cookie)
    assert refused.value.response.status_code == 403
    expected = f"Origin {origin!r} is not this site's origin"
    line = next(line for line in daphne.wait_for_log(expected).splitlines() if expected in line)
    assert "handshake rejected peer=127.0.0.1:" in line and "sessionid" not in line


async def test_a_signed_in_handshake_from_the_site_itself_is_that_user(daphne):
    """The site's own page (same scheme, host and port) connects as the signed-in user."""
    cookie = session_cookie(daphne)
    assert await welcome_user(daphne, origin=f"http://127.0.0.1:{daphne.port}", Cookie=cookie) == "admin"


@pytest.mark.parametrize("origin", [None, "http://127.0.0.1:9999"], ids=["no-origin", "other-port"])
async def test_clients_without_a_session_or_without_origin_are_unchanged(daphne, origin):
    """No cookie: any allowed host's origin connects as before; no Origin: a script with a cookie too."""
    headers = {"origin": origin} if origin else {"Cookie": session_cookie(daphne)}
    assert await welcome_user(daphne, **headers) == (None if origin else "admin")
