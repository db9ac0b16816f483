"""Tokens in process: issue and verify, the handshake middleware, the command and POST /token."""

import json
import re
import time
from io import StringIO

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client, override_settings

from echo import consumers, tokens
from echo.auth import AuthMiddlewareStack
from tests.test_settings_and_http import manage

pytestmark = pytest.mark.django_db(transaction=True)

# RFC 7230's tchar: what a Sec-WebSocket-Protocol entry may hold.
TOKEN_CHARACTERS = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
OTHER_KEY = "another-secret-key-that-is-long-enough-0123456789-abcdefghijklmnopqrstuvwxyz"


@pytest.fixture
def alice():
    return get_user_model().objects.create_user("alice", password="alice-password-1")


def forged(token: str) -> str:
    """Return ``token`` with one character of its payload changed."""
    at = 5
    return token[:at] + ("A" if token[at] != "A" else "B") + token[at + 1 :]


def signed(payload: dict) -> str:
    """Sign ``payload`` exactly as a token is signed, with this process's key."""
    return tokens.signer().sign_object(payload)


def test_a_token_names_its_user_and_expiry_in_token_characters(alice):
    before = time.time()
    token, expires_at = tokens.issue(alice, 600)
    assert TOKEN_CHARACTERS.fullmatch(token) and ":" not in token
    assert before + 600 <= expires_at.timestamp() < time.time() + 601
    assert tokens.verify(token) == (alice, expires_at)
    # Without a ttl, TOKEN_TTL.
    with override_settings(TOKEN_TTL=90):
        assert 90 <= tokens.issue(alice)[1].timestamp() - time.time() <= 91


@pytest.mark.parametrize(
    "make",
    [
        forged,
        lambda token: token + "x",
        lambda token: token.replace(".", ":"),
        lambda token: token.split(".")[0],
        lambda token: "",
        lambda token: "a" * 5000,
        lambda token: token + "." + token,
    ],
    ids=["flipped", "longer", "colon", "no-signature", "empty", "huge", "two-tokens"],
)
def test_a_forged_or_malformed_token_is_refused(alice, make):
    token, _ = tokens.issue(alice, 600)
    with pytest.raises(tokens.InvalidToken) as refused:
        tokens.verify(make(token))
    assert refused.value.reason in ("bad signature", "malformed")
    assert token not in str(refused.value)


def test_a_token_signed_with_another_key_is_refused_unless_that_key_is_a_fallback(alice):
    with override_settings(SECRET_KEY=OTHER_KEY):
        token, _ = tokens.issue(alice, 600)
    with pytest.raises(tokens.InvalidToken, match="bad signature"):
        tokens.verify(token)
    # Key rotation: the old key in SECRET_KEY_FALLBACKS still verifies the tokens it signed.
    with override_settings(SECRET_KEY_FALLBACKS=[OTHER_KEY]):
        assert tokens.verify(token)[0] == alice


def test_an_expired_token_is_refused(alice):
    token = signed({"u": alice.pk, "e": int(time.time()) - 1, "s": tokens.stamp(alice, settings.SECRET_KEY)})
    with pytest.raises(tokens.InvalidToken, match="expired"):
        tokens.verify(token)


def test_a_token_of_a_deleted_inactive_or_re_passworded_user_is_refused(alice):
    bob = get_user_model().objects.create_user("bob", password="bob-password-1")
    tokens_of = {user.username: tokens.issue(user, 600)[0] for user in (alice, bob)}
    bob.delete()
    with pytest.raises(tokens.InvalidToken, match="unknown user"):
        tokens.verify(tokens_of["bob"])
    alice.is_active = False
    alice.save()
    with pytest.raises(tokens.InvalidToken, match="inactive user"):
        tokens.verify(tokens_of["alice"])
    alice.is_active = True
    alice.set_password("a-new-password-2")
    alice.save()
    with pytest.raises(tokens.InvalidToken, match="password changed"):
        tokens.verify(tokens_of["alice"])


@pytest.mark.parametrize("ttl", [0, -5, 86401, "x", "1.5", 1.5, True, [60]])
def test_a_ttl_out_of_bounds_is_refused(ttl):
    with pytest.raises(tokens.InvalidTTL, match="ttl must be"):
        tokens.check_ttl(ttl)


def test_ttl_bounds_follow_the_settings():
    assert tokens.check_ttl(None) == 3600 and tokens.check_ttl("86400") == 86400
    with override_settings(TOKEN_MAX_TTL=60), pytest.raises(tokens.InvalidTTL, match="between 1 and 60"):
        tokens.check_ttl(61)


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"TOKEN_TTL": "100", "TOKEN_MAX_TTL": "50"},
            "TOKEN_TTL must be between 1 and TOKEN_MAX_TTL (50), not 100.",
        ),
        ({"TOKEN_TTL": "0"}, "TOKEN_TTL must be between 1 and TOKEN_MAX_TTL (86400), not 0."),
    ],
)
def test_token_settings_out_of_bounds_stop_the_start_in_one_line(env, line):
    result = manage("check", env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == line


# --- the command ------------------------------------------------------------------------


def test_the_command_prints_only_the_token_on_stdout(alice):
    out, err = StringIO(), StringIO()
    call_command("token", "alice", ttl="120", stdout=out, stderr=err)
    token = out.getvalue().strip()
    assert out.getvalue().count("\n") == 1
    assert tokens.verify(token)[0] == alice
    assert re.fullmatch(r"expires at \S+ \(in 120 s\)\n", err.getvalue())


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["nobody"], "no user named 'nobody'"),
        (["alice", "--ttl", "86401"], "ttl must be between 1 and 86400 seconds (TOKEN_MAX_TTL), not 86401"),
        (["alice", "--ttl", "soon"], "ttl must be a whole number of seconds, not 'soon'"),
    ],
)
def test_the_command_refuses_in_one_line(alice, args, error):
    with pytest.raises(CommandError) as refused:
        call_command("token", *args, stdout=StringIO(), stderr=StringIO())
    assert str(refused.value) == error


def test_the_command_refuses_an_inactive_user(alice):
    alice.is_active = False
    alice.save()
    with pytest.raises(CommandError, match="inactive"):
        call_command("token", "alice", stdout=StringIO())


# --- POST /token --------------------------------------------------------------------------


def signed_in_client(user) -> tuple[Client, str]:
    """A client with a session for ``user`` and the CSRF cookie a page of the site would have."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    client.get("/admin/login/")  # sets the csrftoken cookie
    return client, client.cookies["csrftoken"].value


def test_the_endpoint_issues_a_token_to_a_signed_in_session(alice):
    client, csrf = signed_in_client(alice)
    response = client.post("/token", {"ttl": "300"}, headers={"X-CSRFToken": csrf})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"token", "expires_at", "ttl"} and body["ttl"] == 300
    user, expires_at = tokens.verify(body["token"])
    assert user == alice and expires_at.isoformat() == body["expires_at"]
    assert "no-cache" in response["Cache-Control"]
    # A JSON body, and no body at all (TOKEN_TTL).
    response = client.post(
        "/token", json.dumps({"ttl": 60}), content_type="application/json", headers={"X-CSRFToken": csrf}
    )
    assert response.json()["ttl"] == 60
    assert client.post("/token", headers={"X-CSRFToken": csrf}).json()["ttl"] == 3600


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"ttl": "0"}, "ttl must be between 1 and 86400 seconds (TOKEN_MAX_TTL), not 0"),
        ('{"ttl": 1e9}', "ttl must be a whole number of seconds, not float"),
        ("[1]", 'the body must be a JSON object, e.g. {"ttl": 600}'),
        ("{", 'the body must be a JSON object, e.g. {"ttl": 600}'),
    ],
)
def test_the_endpoint_refuses_a_bad_ttl_with_400(alice, body, error):
    client, csrf = signed_in_client(alice)
    kwargs = {"content_type": "application/json"} if isinstance(body, str) else {}
    response = client.post("/token", body, headers={"X-CSRFToken": csrf}, **kwargs)
    assert (response.status_code, response.json()) == (400, {"error": error})


def test_the_endpoint_refuses_anonymous_callers_and_missing_csrf(alice):
    anonymous = Client(enforce_csrf_checks=True)
    response = anonymous.post("/token")
    assert response.status_code == 403 and "sign in first" in response.json()["error"]
    client, _ = signed_in_client(alice)
    response = client.post("/token")
    assert response.status_code == 403 and "CSRF check failed" in response.json()["error"]
    response = client.get("/token")
    assert response.status_code == 405 and response["Allow"] == "POST"


# --- the handshake ------------------------------------------------------------------------


class Recorder:
    """An inner application that keeps the scope it was given and accepts."""

    def __init__(self) -> None:
        self.scope: dict | None = None

    async def __call__(self, scope, receive, send):
        self.scope = scope
        await receive()
        await send({"type": "websocket.accept"})
        await receive()


async def handshake(token: str, *, header: bool):
    recorder = Recorder()
    if header:
        kwargs = {"headers": [(b"authorization", f"Bearer {token}".encode())]}
    else:
        kwargs = {"subprotocols": ["echo.json", f"bearer.{token}"]}
    communicator = WebsocketCommunicator(AuthMiddlewareStack(recorder), "/ws/", **kwargs)
    connected, detail = await communicator.connect()
    await communicator.disconnect()
    return connected, detail, recorder.scope


@pytest.mark.parametrize("header", [True, False], ids=["header", "subprotocol"])
async def test_a_token_makes_the_connection_its_users_and_leaves_no_trace_in_the_scope(alice, header):
    token, expires_at = await sync_to_async(tokens.issue)(alice, 600)
    connected, _, scope = await handshake(token, header=header)
    assert connected
    assert scope["user"] == alice and scope["token_expires_at"] == expires_at.timestamp()
    assert scope["subprotocols"] == ([] if header else ["echo.json"])
    assert token not in repr(scope)


@pytest.mark.parametrize("header", [True, False], ids=["header", "subprotocol"])
async def test_a_bad_token_is_refused_before_the_application_runs(alice, header, caplog):
    token, _ = await sync_to_async(tokens.issue)(alice, 600)
    connected, _, scope = await handshake(forged(token), header=header)
    assert not connected and scope is None
    assert "token refused: bad signature" in caplog.text and token[:20] not in caplog.text


class KeptConsumer(consumers.RawEchoConsumer):
    """The real raw consumer, kept where the test can look at it."""

    instances: list["KeptConsumer"] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.instances.append(self)


async def test_the_expiry_timer_closes_with_4001_and_is_cancelled_when_the_connection_ends():
    communicator = WebsocketCommunicator(KeptConsumer.as_asgi(), "/ws/raw/")
    communicator.scope["token_expires_at"] = time.time() + 0.3
    assert (await communicator.connect())[0]
    assert await communicator.receive_output(timeout=2) == {
        "type": "websocket.close",
        "code": 4001,
        "reason": "token expired",
    }
    await communicator.disconnect()

    communicator = WebsocketCommunicator(KeptConsumer.as_asgi(), "/ws/raw/")
    communicator.scope["token_expires_at"] = time.time() + 600
    assert (await communicator.connect())[0]
    await communicator.disconnect()
    consumer = KeptConsumer.instances[-1]
    assert consumer.expiry is not None and consumer.expiry.cancelled()


async def test_two_tokens_on_one_handshake_are_refused(alice, caplog):
    token, _ = await sync_to_async(tokens.issue)(alice, 600)
    recorder = Recorder()
    communicator = WebsocketCommunicator(
        AuthMiddlewareStack(recorder),
        "/ws/",
        headers=[(b"authorization", f"Bearer {token}".encode())],
        subprotocols=[f"bearer.{token}"],
    )
    connected, _ = await communicator.connect()
    assert not connected and recorder.scope is None
    assert "token refused: more than one token" in caplog.text
