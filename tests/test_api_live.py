"""The HTTP API (/api/) against a live Daphne and redis-server: publish, history, presence, API keys;
its admin page through Django's test client."""

import asyncio
import json
import re
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
import uuid
from contextlib import closing
from datetime import UTC, datetime, timedelta

import pytest
import websockets
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from echo import api_keys
from echo.models import ApiKey
from tests.servers import DaphneServer, free_port
from tests.test_push_live import admin_opener


def add_key(database, name: str, permission: str = "publish") -> str:
    """Give the live database a key, as the admin would; return the key."""
    key, prefix, digest = api_keys.new_key()
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    with closing(sqlite3.connect(database)) as db, db:
        db.execute(
            "INSERT INTO echo_apikey (name, prefix, digest, permission, created_at) VALUES (?, ?, ?, ?, ?)",
            (name, prefix, digest, permission, now),
        )
    return key


def query(database, sql: str, *args) -> list[tuple]:
    with closing(sqlite3.connect(database)) as db:
        return db.execute(sql, args).fetchall()


def call(
    server: DaphneServer,
    method: str,
    path: str,
    body=None,
    *,
    key: str | None = None,
    headers: dict | None = None,
) -> tuple[int, dict]:
    """Make one request; return its status and its JSON body."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    sent = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(
        server.http_url + path, data=data, method=method, headers={**sent, **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            status, raw, kind = response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as error:
        status, raw, kind = error.code, error.read(), error.headers["Content-Type"]
    assert kind.startswith("application/json"), f"{status} {kind}: {raw[:300]!r}"
    return status, json.loads(raw)


async def publish(server: DaphneServer, key: str, body) -> tuple[int, dict]:
    return await asyncio.to_thread(call, server, "POST", "/api/publish", body, key=key)


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def connect(server: DaphneServer, path: str = "/ws/", session: str | None = None):
    """A JSON client; with ``session``, signed in as that session's user (a browser's cookie)."""
    headers = {"Cookie": f"sessionid={session}"} if session else None
    origin = server.http_url if session else None
    return websockets.connect(
        server.ws_url + path,
        subprotocols=["echo.json"],
        additional_headers=headers,
        origin=origin,
        open_timeout=30,
    )


def admin_session(server: DaphneServer) -> str:
    _, jar = admin_opener(server)
    return next(cookie.value for cookie in jar if cookie.name == "sessionid")


async def next_push(ws, timeout: float = 5) -> dict:
    """Return the next broadcast envelope, past the welcome and presence counts."""
    while True:
        envelope = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if envelope["type"] in ("broadcast", "message"):
            return envelope


@pytest.fixture(scope="module")
def publish_key(live_database) -> str:
    return add_key(live_database, "deploy-hook")


@pytest.fixture(scope="module")
def read_key(live_database) -> str:
    return add_key(live_database, "dashboard", permission="read")


async def test_publish_reaches_everyone_a_group_or_one_user(daphne, live_database, publish_key):
    """A publish with no group reaches every client, with a group only its members, with a user only
    that user's connections; each client's envelope has the id the API answered and the key's name."""
    red = unique("red")
    session = await asyncio.to_thread(admin_session, daphne)
    (admin_id,) = query(live_database, "SELECT id FROM auth_user WHERE username = 'admin'")[0]
    async with (
        connect(daphne, f"/ws/?group={red}") as member,
        connect(daphne) as other,
        connect(daphne, session=session) as admin,
    ):
        status, sent = await publish(daphne, publish_key, {"text": "to all"})
        assert status == 201, sent
        assert sent["group"] == "all" and isinstance(sent["record"], int)
        for ws in (member, other, admin):
            push = await next_push(ws)
            assert (push["type"], push["id"], push["text"]) == ("broadcast", sent["id"], "to all")
            assert (push["sender"], push["sent_at"]) == ("api:deploy-hook", sent["sent_at"])

        status, sent = await publish(daphne, publish_key, {"text": "to red", "group": red})
        assert (status, sent["group"]) == (201, red)
        assert (await next_push(member))["text"] == "to red"

        status, sent = await publish(daphne, publish_key, {"text": "to admin", "user": "admin"})
        assert (status, sent["group"]) == (201, f"user:{admin_id}")
        assert (await next_push(admin))["text"] == "to admin"

        # Whoever the red and user pushes were not for sees the next push to all next.
        status, last = await publish(daphne, publish_key, {"text": "last"})
        assert status == 201
        for ws in (member, other, admin):
            assert (await next_push(ws))["id"] == last["id"]

    rows = query(
        live_database,
        "SELECT text, kind, sender_label, pushed FROM echo_broadcast WHERE id = ?",
        sent["record"],
    )
    assert rows == [("to admin", "broadcast", "api:deploy-hook", 1)]


def test_each_publish_logs_one_line_with_the_key_name_and_prefix_never_the_key(daphne, live_database):
    key = add_key(live_database, "log-check")
    status, sent = call(daphne, "POST", "/api/publish", {"text": "logged"}, key=key)
    assert status == 201
    log = daphne.wait_for_log(f"broadcast={sent['id']} group=all")
    lines = [line for line in log.splitlines() if "api publish by key log-check" in line]
    assert len(lines) == 1 and " INFO echo.api " in lines[0], lines
    assert f"({key[: api_keys.PREFIX_LENGTH]}...)" in lines[0]
    assert key not in log


def test_history_pages_after_a_position(daphne, publish_key, read_key):
    """history?after=N&limit=M: the pushes after N, oldest first, and a next after value while more remain."""
    group = unique("history")
    sent = []
    for n in range(5):
        status, body = call(
            daphne, "POST", "/api/publish", {"text": f"h{n}", "group": group}, key=publish_key
        )
        assert status == 201
        sent.append(body)
    after, pages = sent[0]["id"] - 1, []
    while after is not None:
        status, page = call(daphne, "GET", f"/api/history?after={after}&limit=2&group={group}", key=read_key)
        assert status == 200, page
        pages.append([item["text"] for item in page["items"]])
        after = page["next"]
    assert pages == [["h0", "h1"], ["h2", "h3"], ["h4"]]

    status, page = call(daphne, "GET", f"/api/history?after={sent[1]['id']}&group={group}", key=read_key)
    first = page["items"][0]
    assert set(first) == {"id", "kind", "text", "group", "sender", "sent_at"}
    assert (first["id"], first["kind"], first["text"], first["group"]) == (
        sent[2]["id"],
        "broadcast",
        "h2",
        group,
    )
    assert first["sender"] == "api:deploy-hook"
    assert first["sent_at"] == sent[2]["sent_at"]
    assert page["next"] is None

    # A user's pushes; with a group too, the pushes of either.
    status, _ = call(daphne, "POST", "/api/publish", {"text": "just admin", "user": "admin"}, key=publish_key)
    assert status == 201
    status, page = call(daphne, "GET", f"/api/history?after={sent[4]['id']}&user=admin", key=read_key)
    assert [item["text"] for item in page["items"]] == ["just admin"]
    both = f"/api/history?after={sent[3]['id']}&user=admin&group={group}"
    status, page = call(daphne, "GET", both, key=read_key)
    assert [item["text"] for item in page["items"]] == ["h4", "just admin"]


async def test_presence_counts_live_connections(daphne, read_key):
    """presence?group=G counts G's live connections and their signed-in users; they go when they close."""
    group = unique("here")
    session = await asyncio.to_thread(admin_session, daphne)

    async def presence_until(path: str, done) -> dict:
        for _ in range(100):
            status, body = await asyncio.to_thread(call, daphne, "GET", path, key=read_key)
            assert status == 200, body
            if done(body):
                return body
            await asyncio.sleep(0.1)
        raise AssertionError(f"presence never got there: {body}")

    async with (
        connect(daphne, f"/ws/?group={group}"),
        connect(daphne, f"/ws/?group={group}", session=session),
    ):
        body = await presence_until(f"/api/presence?group={group}", lambda body: body["online"] == 2)
        assert body == {"online": 2, "groups": {group: 2}, "users": 1}
        status, everyone = call(daphne, "GET", "/api/presence", key=read_key)
        assert status == 200
        assert everyone["groups"][group] == 2 and everyone["groups"]["all"] == everyone["online"] >= 2
        assert everyone["users"] >= 1
    body = await presence_until(f"/api/presence?group={group}", lambda body: body["online"] == 0)
    assert body == {"online": 0, "groups": {group: 0}, "users": 0}


def test_a_missing_malformed_unknown_or_revoked_key_gets_401(daphne, live_database):
    key = add_key(live_database, "soon-revoked")
    assert call(daphne, "GET", "/api/presence", key=key)[0] == 200
    with closing(sqlite3.connect(live_database)) as db, db:
        db.execute(
            "UPDATE echo_apikey SET revoked_at = ? WHERE name = 'soon-revoked'", ("2026-11-22 09:00:00",)
        )
    status, body = call(daphne, "POST", "/api/publish", {"text": "revoked?"}, key=key)
    assert (status, body) == (
        401,
        {"error": f"this API key ({key[:11]}...) was revoked on 2026-11-22 09:00 UTC"},
    )

    unknown = api_keys.new_key()[0]
    session = admin_session(daphne)
    for headers, error in [
        ({}, "no API key"),
        ({"Authorization": f"Basic {key}"}, "expected the header"),
        ({"Authorization": "Bearer "}, "expected the header"),
        ({"Authorization": "Bearer not-a-key"}, "this is not an API key"),
        ({"Authorization": f"Bearer {unknown}"}, "unknown API key"),
        ({"Cookie": f"sessionid={session}"}, "no API key"),  # a signed-in session is no key
    ]:
        for method, path, body in [("POST", "/api/publish", {"text": "x"}), ("GET", "/api/history", None)]:
            status, answer = call(daphne, method, path, body, headers=headers)
            assert status == 401 and error in answer["error"], (headers, answer)
    assert not query(live_database, "SELECT id FROM echo_broadcast WHERE text IN ('revoked?', 'x')")
    assert key not in daphne.log() and unknown not in daphne.log()


def test_a_read_key_reads_but_cannot_publish(daphne, live_database, read_key):
    status, body = call(daphne, "POST", "/api/publish", {"text": "from a reader"}, key=read_key)
    assert (status, body) == (403, {"error": "the API key 'dashboard' may only read: it cannot publish"})
    assert not query(live_database, "SELECT id FROM echo_broadcast WHERE text = 'from a reader'")
    assert call(daphne, "GET", "/api/history?limit=1", key=read_key)[0] == 200
    assert call(daphne, "GET", "/api/presence", key=read_key)[0] == 200


@pytest.mark.parametrize(
    "body, field, reason",
    [
        ({}, "text", "Field required"),
        ({"text": 5}, "text", "Input should be a valid string"),
        ({"text": " \n\t"}, "text", "the text is empty"),
        ({"text": "x", "group": "bad name"}, "group", "invalid group name 'bad name'"),
        ({"text": "x", "group": 7}, "group", "Input should be a valid string"),
        ({"text": "x", "user": "nobody-by-this-name"}, "user", "no user named 'nobody-by-this-name'"),
        ({"text": "x", "group": "red", "user": "admin"}, "user", "give a group or a user, not both"),
        ({"text": "x", "grup": "red"}, "grup", "Extra inputs are not permitted"),
        ({"text": "x", "payload": "red"}, "payload", "Extra inputs are not permitted"),
        ({"text": "a\x00b"}, "text", "NUL character"),
        ({"text": "x" * (1024 * 1024 + 1)}, "text", "the text is too long"),
        (b'{"text": "unclosed', "body", "JSON"),
        (b"[1, 2]", "body", ""),
        (b'{"text": "' + b"x" * 3_000_000 + b'"}', "body", "the request body is too large"),
    ],
    ids=[
        "missing",
        "text-not-a-string",
        "blank",
        "bad-group",
        "group-not-a-string",
        "unknown-user",
        "group-and-user",
        "unknown-field",
        "unknown-field-named-as-the-parameter",
        "nul",
        "too-long",
        "not-json",
        "not-an-object",
        "body-too-large",
    ],
)
def test_a_bad_publish_is_400_naming_the_field_and_records_nothing(
    daphne, live_database, publish_key, body, field, reason
):
    before = query(live_database, "SELECT count(*) FROM echo_broadcast")
    status, answer = call(daphne, "POST", "/api/publish", body, key=publish_key)
    assert status == 400, answer
    assert [error["field"] for error in answer["errors"]] == [field], answer
    assert reason in answer["errors"][0]["reason"] and answer["error"].startswith(f"{field}: "), answer
    assert query(live_database, "SELECT count(*) FROM echo_broadcast") == before


@pytest.mark.parametrize(
    "path, field, reason",
    [
        ("/api/history?after=-1", "after", "greater than or equal to 0"),
        ("/api/history?after=abc", "after", "valid integer"),
        ("/api/history?limit=0", "limit", "greater than or equal to 1"),
        ("/api/history?limit=1001", "limit", "less than or equal to 1000"),
        ("/api/history?group=bad%20name", "group", "invalid group name"),
        ("/api/history?user=nobody-by-this-name", "user", "no user named"),
        ("/api/presence?group=" + "x" * 91, "group", "use 1 to 90 letters"),
        ("/api/history?limt=5", "limt", "unknown parameter: expected after, limit, group, user"),
        ("/api/presence?grup=red", "grup", "unknown parameter: expected group"),
    ],
)
def test_a_bad_query_is_400_naming_the_field(daphne, read_key, path, field, reason):
    status, answer = call(daphne, "GET", path, key=read_key)
    assert status == 400 and [error["field"] for error in answer["errors"]] == [field], answer
    assert reason in answer["errors"][0]["reason"], answer


def test_publish_with_redis_down_is_503_with_the_record(start_daphne, live_database):
    """Redis unreachable: 503 naming the broadcast kept in the history (marked not sent), no traceback."""
    server = start_daphne(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    key = add_key(live_database, "while-down")
    status, body = call(server, "POST", "/api/publish", {"text": "lost?", "group": "ops"}, key=key)
    assert status == 503, body
    assert body["id"] is None and isinstance(body["record"], int)
    assert f"record {body['record']}" in body["error"] and "Redis is unreachable" in body["error"]
    assert "127.0.0.1" not in body["error"], "clients are not told where Redis is"
    row = query(
        live_database,
        'SELECT text, "group", pushed, position FROM echo_broadcast WHERE id = ?',
        body["record"],
    )
    assert row == [("lost?", "ops", 0, None)]
    log = server.wait_for_log("api publish by key while-down")
    assert "WARNING echo.api api publish by key while-down" in log and key not in log


def test_the_schema_and_docs_are_served(daphne):
    with urllib.request.urlopen(daphne.http_url + "/api/openapi.json", timeout=10) as response:
        schema = json.loads(response.read())
    assert set(schema["paths"]) == {"/api/publish", "/api/history", "/api/presence"}
    assert schema["components"]["securitySchemes"] == {"ApiKeyAuth": {"type": "http", "scheme": "bearer"}}
    with urllib.request.urlopen(daphne.http_url + "/api/docs", timeout=10) as response:
        page = response.read().decode()
    assert "/static/ninja/swagger-ui-bundle" in page and "cdn" not in page.lower()


# --- Keys, and their admin page (Django's test client: nothing here depends on Daphne) -------------


@pytest.mark.django_db
def test_a_key_is_kept_only_as_its_digest_and_verified_by_it():
    record, key = api_keys.create(name="worker", permission=ApiKey.READ)
    assert key.startswith("ek_") and len(key) == api_keys.KEY_LENGTH
    stored = ApiKey.objects.values().get(pk=record.pk)
    assert key not in json.dumps(stored, default=str)
    assert stored["prefix"] == key[:11] and stored["digest"] == api_keys.digest_of(key)
    assert api_keys.verify(key).pk == record.pk
    with pytest.raises(api_keys.KeyRefused, match="unknown API key"):
        api_keys.verify(key[:-1] + ("A" if key[-1] != "A" else "B"))


@pytest.mark.django_db
def test_last_used_is_written_at_most_once_a_minute(django_assert_num_queries):
    record, key = api_keys.create(name="busy")
    assert record.last_used_at is None
    with django_assert_num_queries(2):  # the lookup, and the write
        used = api_keys.verify(key).last_used_at
    with django_assert_num_queries(1):  # the lookup only
        api_keys.verify(key)
    assert ApiKey.objects.get(pk=record.pk).last_used_at == used
    ApiKey.objects.filter(pk=record.pk).update(last_used_at=timezone.now() - timedelta(minutes=2))
    later = api_keys.verify(key).last_used_at
    assert later > used and ApiKey.objects.get(pk=record.pk).last_used_at == later


@pytest.mark.django_db
def test_the_admin_shows_a_new_key_once_lists_keys_and_revokes_them():
    admin = User.objects.create_superuser("root", password="pw")
    client = Client()
    client.force_login(admin)
    page = client.post(
        "/admin/echo/apikey/add/", {"name": "billing", "permission": "publish"}, follow=True
    ).content.decode()
    (key,) = re.findall(r"<code>(ek_[A-Za-z0-9_-]{43})</code>", page)
    record = ApiKey.objects.get(name="billing")
    assert api_keys.verify(key).pk == record.pk and record.created_by == admin

    listing = client.get("/admin/echo/apikey/").content.decode()
    assert key not in listing and f"{key[:11]}..." in listing
    for column in ("name", "key", "permission", "created at", "last used at", "revoked"):
        assert f">{column.capitalize()}<" in listing or f">{column}<" in listing.lower(), column
    change = client.get(f"/admin/echo/apikey/{record.pk}/change/").content.decode()
    assert key not in change

    client.post(
        "/admin/echo/apikey/", {"action": "revoke_selected", "_selected_action": [record.pk]}, follow=True
    )
    record.refresh_from_db()
    assert record.revoked_at is not None
    with pytest.raises(api_keys.KeyRefused, match="was revoked"):
        api_keys.verify(key)
