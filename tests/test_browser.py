"""The chat page and the admin in a real Chromium (Debian's), driven by Playwright, against live servers.

Screenshots go to artifacts/ (git-ignored) for a person to look at.
"""

import json
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.template import Context, Template
from websockets.sync.server import ServerConnection, serve

from tests.conftest import ADMIN_PASSWORD
from tests.servers import ROOT, DaphneServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "artifacts"

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="Chromium is not installed (apt-get install chromium): browser tests skipped",
)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--no-first-run",
                # A page a test serves through page.route() has no address of its own, so Chromium takes
                # it for a public page and blocks its sockets to 127.0.0.1 (Local Network Access).
                "--disable-features=LocalNetworkAccessChecks",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors
    yield page
    context.close()


def open_chat(page, server: DaphneServer) -> None:
    page.goto(server.http_url + "/")
    expect_status(page, "Connected")


def expect_status(page, text: str, timeout: float = 10_000) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#status")).to_contain_text(text, timeout=timeout)


def log_lines(page) -> list[str]:
    return page.locator("#log li .text").all_inner_texts()


def send(page, text: str) -> None:
    page.fill("#message", text)
    page.press("#message", "Enter")


def wait_for_line(page, text: str, kind: str = "", timeout: float = 10_000) -> None:
    page.locator(f"#log li{'.' + kind if kind else ''} .text", has_text=text).last.wait_for(timeout=timeout)


def broadcast(server: DaphneServer, *args: str) -> None:
    command = [sys.executable, "manage.py", "broadcast", *args]
    result = subprocess.run(command, cwd=ROOT, env=server.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_typing_a_message_shows_it_sent_and_the_reply_received(page, daphne):
    """Type, press Enter: the message shows as sent and the server's reply as received, with times."""
    open_chat(page, daphne)
    assert page.locator("#url").inner_text() == f"ws://127.0.0.1:{daphne.port}/ws/"
    send(page, "hello there")
    wait_for_line(page, "Server: Hello. You said: hello there", "received")
    assert page.locator("#log li.sent .text").last.inner_text() == "hello there"
    assert re.fullmatch(r"\d\d:\d\d:\d\d( [AP]M)?", page.locator("#log li time").first.inner_text())
    page.click("#send")  # an empty box sends nothing
    page.fill("#message", "by click")
    page.click("#send")
    wait_for_line(page, "Server: Hello. You said: by click", "received")
    page.locator("#online").filter(has_text=re.compile(r"^\d+ online$")).wait_for()
    screenshot(page, "chat.png")
    assert page.errors == []


def test_a_broadcast_from_the_command_appears_marked_as_from_the_server(page, daphne):
    """manage.py broadcast shows up as a broadcast line with its sender and time."""
    open_chat(page, daphne)
    broadcast(daphne, "maintenance at noon")
    wait_for_line(page, "maintenance at noon", "broadcast")
    detail = page.locator("#log li.broadcast small").last.inner_text()
    assert re.fullmatch(r"from server to all at \d\d:\d\d:\d\d( [AP]M)?", detail)


def test_a_hostile_message_is_shown_as_text_and_runs_nothing(page, daphne):
    """<img onerror> in a message or a broadcast shows those characters; no element, no script."""
    hostile = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
    response = page.goto(daphne.http_url + "/")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    expect_status(page, "Connected")
    send(page, hostile)
    wait_for_line(page, "Server: Hello. You said: " + hostile, "received")
    broadcast(daphne, hostile)
    wait_for_line(page, hostile, "broadcast")
    page.wait_for_timeout(300)
    assert page.locator("#log img, #log script").count() == 0
    assert page.evaluate("window.__pwned") is None
    assert hostile in log_lines(page)


def test_group_join_receives_group_broadcasts_and_survives_a_restart(page, fresh_daphne):
    """Kill the Daphne the page talks to: the page says so, reconnects by itself, rejoins its group,
    and shows what was broadcast while it was away."""
    open_chat(page, fresh_daphne)
    page.fill("#group", "team-red")
    page.press("#group", "Enter")
    page.locator("#group-list li", has_text="team-red").wait_for()
    broadcast(fresh_daphne, "red one", "--group", "team-red")
    wait_for_line(page, "red one", "broadcast")

    fresh_daphne.kill()
    expect_status(page, "reconnecting in")
    status = page.locator("#status").inner_text()
    assert re.search(r"Closed \(code 1006\) – reconnecting in \d+ s", status), status
    send(page, "while down")
    wait_for_line(page, "Not sent: “while down” – the connection is not open", "error")
    broadcast(fresh_daphne, "missed while away")  # Redis is up: it is stored and published to no one
    broadcast(fresh_daphne, "missed by red", "--group", "team-red")

    fresh_daphne.start()  # the same port
    expect_status(page, "Connected", timeout=40_000)
    wait_for_line(page, "missed while away", "broadcast")
    wait_for_line(page, "missed by red", "broadcast")
    wait_for_line(page, "Caught up on 2 broadcast(s) missed while away", "system")
    send(page, "back again")
    wait_for_line(page, "Server: Hello. You said: back again", "received")
    assert "Server: Hello. You said: while down" not in log_lines(page), "nothing was queued"
    broadcast(fresh_daphne, "red two", "--group", "team-red")
    wait_for_line(page, "red two", "broadcast")
    screenshot(page, "chat-after-reconnect.png")


def test_disconnect_and_connect_buttons(page, daphne):
    """Disconnect closes with the code and reason shown and no reconnect; Connect brings it back."""
    open_chat(page, daphne)
    page.click("#disconnect")
    expect_status(page, "Closed (code 1000: closed by the user)")
    page.wait_for_timeout(1500)
    assert "reconnecting" not in page.locator("#status").inner_text()
    page.click("#connect")
    expect_status(page, "Connected")
    send(page, "after connect")
    wait_for_line(page, "Server: Hello. You said: after connect", "received")


def test_binary_send_comes_back_as_binary(page, daphne):
    """With "binary" ticked, the message goes as bytes and the echo says it came back as bytes."""
    open_chat(page, daphne)
    page.check("#binary")
    send(page, "bytes ✓")
    wait_for_line(page, "bytes ✓", "received")
    assert page.locator("#log li.received small").last.inner_text() == "binary, 9 bytes"


def test_the_log_stays_bounded_and_scrolled_to_the_newest_line(page, start_daphne):
    """Thousands of lines: the log keeps the newest 2,000 and stays scrolled to the bottom."""
    open_chat(page, start_daphne(WEBSOCKET_RATE="0"))  # 1,200 messages at once would be a flood
    page.evaluate(
        """() => {
            const form = document.getElementById("send-form"), box = document.getElementById("message");
            for (let i = 0; i < 1200; i++) { box.value = "n" + i; form.requestSubmit(); }
        }"""
    )
    wait_for_line(page, "Server: Hello. You said: n1199", "received", timeout=30_000)
    assert page.locator("#log li").count() == 2000
    at_bottom = page.evaluate(
        "(() => { const l = document.getElementById('log');"
        " return l.scrollHeight - l.scrollTop - l.clientHeight < 5; })()"
    )
    assert at_bottom


def test_the_page_fits_a_phone(browser, daphne):
    """At 375 px wide nothing scrolls sideways and the composer is visible."""
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
    page = context.new_page()
    open_chat(page, daphne)
    send(page, "from a phone")
    wait_for_line(page, "Server: Hello. You said: from a phone", "received")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    assert page.locator("#send").is_visible()
    screenshot(page, "chat-phone.png")
    context.close()


@pytest.fixture
def signed_in_page(browser, daphne) -> Iterator:
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    page = context.new_page()
    page.goto(daphne.http_url + "/admin/login/?next=/admin/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", ADMIN_PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/")
    yield page
    context.close()


def test_the_admin_renders_styled(signed_in_page):
    """/admin/ under Daphne with DJANGO_DEBUG=0 has its stylesheet applied."""
    page = signed_in_page
    header = page.locator("#header")
    background = header.evaluate("element => getComputedStyle(element).backgroundColor")
    assert background not in ("rgba(0, 0, 0, 0)", "transparent"), background
    assert page.locator("a", has_text="Broadcasts").count() >= 1
    screenshot(page, "admin.png")


def test_a_signed_in_user_is_shown_by_name(signed_in_page, daphne):
    """The page names a signed-in user, and the WebSocket knows them too (the welcome envelope)."""
    page = signed_in_page
    page.goto(daphne.http_url + "/")
    expect_status(page, "Connected")
    assert page.locator("#who").inner_text() == "Signed in as admin"
    admin_tab = page.context.new_page()
    user_cells = admin_tab.locator("#result_list td[class^='field-user']", has_text="admin")
    for _ in range(40):  # presence rows are written every PRESENCE_INTERVAL (0.5 s here)
        admin_tab.goto(daphne.http_url + "/admin/echo/connection/")
        if user_cells.count():
            break
        admin_tab.wait_for_timeout(250)
    assert user_cells.count() == 1
    screenshot(admin_tab, "admin-connections.png")


def test_a_first_visit_fetches_nothing_that_fails(browser, daphne):
    """The chat page and the admin's login page: no 404 (the favicon), no console error."""
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    page = context.new_page()
    failed: list[str] = []
    page.on("response", lambda response: response.status >= 400 and failed.append(response.url))
    page.on("console", lambda message: message.type == "error" and failed.append(message.text))
    for path in ("/", "/admin/login/"):
        with page.expect_response(lambda response: "favicon" in response.url, timeout=5000) as icon:
            page.goto(daphne.http_url + path)
        assert icon.value.status == 200, icon.value.url
    page.goto(daphne.http_url + "/favicon.ico")
    assert failed == []
    context.close()


def find_connections(page, server: DaphneServer, query: str, count: int = 1) -> None:
    """Show the admin's connection list filtered by ``query`` once ``count`` rows are there."""
    for _ in range(40):  # presence rows are written every PRESENCE_INTERVAL (0.5 s here)
        page.goto(f"{server.http_url}/admin/echo/connection/?q={query}")
        if page.locator("#result_list tbody tr").count() >= count:
            return
        page.wait_for_timeout(250)
    raise AssertionError(f"no connection matching {query!r} in the admin")


def test_an_administrators_disconnect_is_shown_and_not_undone(browser, signed_in_page, daphne):
    """Disconnected by an administrator, the page says so in its log and stays closed until
    the person presses Connect."""
    context = browser.new_context(viewport={"width": 1100, "height": 760}, user_agent="echo-test kicked")
    chat = context.new_page()
    open_chat(chat, daphne)
    admin = signed_in_page
    for _ in range(20):  # the action bar shows once the list's counts agree (presence writes land in batches)
        find_connections(admin, daphne, "kicked")
        if admin.locator("select[name=action]").count():
            break
        admin.wait_for_timeout(250)
    admin.check("#action-toggle")
    admin.select_option("select[name=action]", "disconnect_selected")
    admin.click("button[name=index]")
    expect_status(chat, "Closed (code 4000: disconnected by admin)")
    wait_for_line(chat, "Disconnected by an administrator (disconnected by admin)", "error")
    chat.wait_for_timeout(2500)  # the automatic reconnect would have come within about a second
    assert chat.locator("#status").inner_text() == "Closed (code 4000: disconnected by admin)"
    assert chat.locator("#connect").is_enabled()
    chat.click("#connect")
    expect_status(chat, "Connected")
    context.close()


def open_raw_websocket(server: DaphneServer, path: str, user_agent: str) -> socket.socket:
    """Open a WebSocket with a plain socket (this test's thread runs Playwright's own loop)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: L4kHN+1Bx7zKbxsDbqgzHw==\r\nSec-WebSocket-Version: 13\r\n"
        f"User-Agent: {user_agent}\r\n\r\n".encode()
    )
    assert sock.recv(12) == b"HTTP/1.1 101"
    return sock


def test_the_connections_list_fits_1280_pixels(signed_in_page, daphne):
    """A connection in many long-named groups, from a long user agent: no sideways scrolling."""
    groups = "&".join(f"group=a-rather-long-group-name-number-{n:02}" for n in range(19))
    agent = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) wide-test " * 3
    with open_raw_websocket(daphne, f"/ws/?{groups}", agent):
        page = signed_in_page
        page.set_viewport_size({"width": 1280, "height": 800})
        find_connections(page, daphne, "wide-test")
        screenshot(page, "admin-connections-1280.png")
        widths = page.evaluate(
            """() => {
                const results = document.querySelector("#changelist .results");
                return [document.documentElement.scrollWidth, results.scrollWidth, results.clientWidth];
            }"""
        )
    page_width, table_width, box_width = widths
    assert page_width <= 1280 and table_width <= box_width, widths


def sign_in(page, server: DaphneServer) -> None:
    """Sign ``page``'s browser context in as the administrator, on ``server``."""
    page.goto(server.http_url + "/admin/login/?next=/admin/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", ADMIN_PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/")


def join_room(page, name: str) -> None:
    """Join room ``name`` and pick it as where the message box sends."""
    page.fill("#group", name)
    page.press("#group", "Enter")
    page.locator("#group-list li", has_text=name).wait_for()
    page.select_option("#to", name)


def room_line(page, text: str):
    """The room message line whose text is ``text``, once it is there."""
    line = page.locator("#log li.message").filter(has=page.locator(".text", has_text=text)).last
    line.wait_for(timeout=10_000)
    return line


def chat_page(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors
    return page


def test_two_people_chat_in_a_room(browser, start_daphne):
    """A signed-in user and a guest in room "red": each sees the other's lines under the right name,
    their own marked, and hostile text as the characters it is."""
    server = start_daphne(ROOM_SPEAKERS="anyone")
    admin, guest = chat_page(browser), chat_page(browser)
    sign_in(admin, server)
    for page in (admin, guest):
        open_chat(page, server)
        join_room(page, "red")
    assert admin.locator("#who").inner_text() == "Signed in as admin"
    assert guest.locator("#who").inner_text() == "Anonymous"

    send(admin, "hello from the admin")
    own, seen = room_line(admin, "hello from the admin"), room_line(guest, "hello from the admin")
    assert own.locator(".who").inner_text() == seen.locator(".who").inner_text() == "admin"
    assert own.locator("small").inner_text() == "in red"
    assert "mine" in own.get_attribute("class") and "mine" not in seen.get_attribute("class")
    assert admin.input_value("#message") == ""

    send(guest, "hi, a guest here")
    own, seen = room_line(guest, "hi, a guest here"), room_line(admin, "hi, a guest here")
    guest_name = own.locator(".who").inner_text()
    assert re.fullmatch(r"guest-[0-9a-f]{8}", guest_name), guest_name
    assert seen.locator(".who").inner_text() == guest_name
    assert "mine" in own.get_attribute("class") and "mine" not in seen.get_attribute("class")

    hostile = '<img src=x onerror="window.__pwned=1"></script><script>window.__pwned=2</script>'
    send(guest, hostile)
    assert room_line(admin, "window.__pwned=2").locator(".text").inner_text() == hostile
    assert room_line(guest, "window.__pwned=2").locator(".text").inner_text() == hostile
    for page in (admin, guest):
        page.wait_for_timeout(300)
        assert page.locator("#log img, #log script").count() == 0
        assert page.evaluate("window.__pwned") is None
    assert admin.locator("#log li.message").count() == guest.locator("#log li.message").count() == 3
    screenshot(admin, "chat-room.png")

    # "Server (echo)" still talks to the echo, and the room is not told.
    admin.select_option("#to", "")
    send(admin, "just to the server")
    wait_for_line(admin, "Server: Hello. You said: just to the server", "received")
    assert "just to the server" not in log_lines(guest)
    assert admin.errors == guest.errors == []
    for page in (admin, guest):
        page.context.close()


def test_a_guest_may_not_speak_where_only_users_may(page, daphne):
    """With ROOM_SPEAKERS at its default, a guest's line is refused with the server's reason, and the
    guest still receives the room."""
    open_chat(page, daphne)
    join_room(page, "quiet")
    send(page, "may I?")
    wait_for_line(page, "only signed-in users may speak in a room: sign in first", "error")
    assert page.locator("#log li.message").count() == 0
    assert page.input_value("#message") == ""


def test_a_room_message_sent_while_away_arrives_after_the_reconnect(browser, start_daphne):
    """Kill the Daphne one page talks to; a message said in the room meanwhile, through another
    process, reaches that page once it is back, once."""
    first, second = start_daphne(ROOM_SPEAKERS="anyone"), start_daphne(ROOM_SPEAKERS="anyone")
    reader, writer = chat_page(browser), chat_page(browser)
    open_chat(reader, first)
    open_chat(writer, second)
    for page in (reader, writer):
        join_room(page, "red")
    send(writer, "before the outage")
    room_line(reader, "before the outage")

    first.kill()
    expect_status(reader, "reconnecting in")
    send(writer, "said while you were away")
    room_line(writer, "said while you were away")  # the room had it: the writer is in the room

    first.start()  # the same port
    expect_status(reader, "Connected", timeout=40_000)
    room_line(reader, "said while you were away")
    wait_for_line(reader, "Caught up on 1 broadcast(s) missed while away", "system")
    assert reader.locator("#log li.message").count() == 2, "nothing twice"
    send(writer, "after the outage")
    room_line(reader, "after the outage")
    assert reader.locator("#log li.message .text").all_inner_texts() == [
        "before the outage",
        "said while you were away",
        "after the outage",
    ]
    for page in (reader, writer):
        page.context.close()


EMBED_PATH = "/embedded/"


def show_embedded(page, server: DaphneServer, html: str) -> None:
    """Serve ``html`` as a page of ``server``'s origin (a developer's own template), and open it."""
    url = server.http_url + EMBED_PATH
    page.route(
        url, lambda route: route.fulfill(status=200, content_type="text/html; charset=utf-8", body=html)
    )
    page.goto(url)


def readme_embed_snippet() -> str:
    """The template lines of the README's "Embed the client", rendered by Django."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Embed the client", 1)[1]
    snippet = section.split("```html\n", 1)[1].split("```", 1)[0]
    return Template(snippet).render(Context())


def test_the_readmes_embed_snippet_receives_pushes(page, daphne):
    """The README's ten lines, in a page of one's own: its group's broadcasts show, others' do not."""
    with page.expect_websocket() as socket_info:
        show_embedded(page, daphne, "<!doctype html><title>mine</title>" + readme_embed_snippet())
    welcome = json.loads(socket_info.value.wait_for_event("framereceived"))
    assert welcome["type"] == "welcome" and welcome["groups"] == ["all", "staff"], welcome
    broadcast(daphne, "not for staff", "--group", "other")
    broadcast(daphne, "staff <b>meeting</b> at noon", "--group", "staff")
    page.locator("#pushes li", has_text="meeting").wait_for()
    assert page.locator("#pushes li").all_inner_texts() == ["server: staff <b>meeting</b> at noon"]
    assert page.locator("#pushes b").count() == 0
    assert page.errors == []


class ScriptedServer:
    """A WebSocket server that plays one scripted part per connection, to see what the client does
    after close codes the real server sends only in rare moments (1013: a consumer that fell behind)."""

    def __init__(self, parts):
        self.parts = list(parts)
        self.requests: list[tuple[str, str]] = []  # (path, Sec-WebSocket-Protocol) of each handshake
        self.server = serve(self.handle, "127.0.0.1", 0, subprotocols=["echo.json"])
        self.port = self.server.socket.getsockname()[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def handle(self, connection: ServerConnection) -> None:
        self.requests.append((connection.request.path, connection.request.headers["Sec-WebSocket-Protocol"]))
        part = (
            self.parts.pop(0) if self.parts else (lambda connection: connection.close(1011, "no part left"))
        )
        part(connection)

    def stop(self) -> None:
        self.server.shutdown()


def envelope(kind: str, **fields) -> str:
    return json.dumps({"type": kind, **fields})


def push(position: int, text: str) -> str:
    return envelope(
        "broadcast", id=position, text=text, group="all", sender="server", sent_at="2026-11-22T08:00:00+00:00"
    )


def test_the_client_reconnects_resumes_and_stops_at_a_close_that_says_stop(page, daphne):
    """Against a scripted server: the token rides beside echo.json; after 1013 the client comes back
    within the backoff's ceiling, with ?after= its last id and its groups; after 4001 it stays away."""

    def overloaded(connection):
        connection.send(
            envelope("welcome", connection="c1", user="alice", groups=["all", "red"], last_broadcast=5)
        )
        connection.send(push(6, "six"))
        connection.close(1013, "try again later")

    def expired(connection):
        connection.send(
            envelope("welcome", connection="c2", user="alice", groups=["all", "red"], last_broadcast=7)
        )
        connection.send(push(7, "seven"))
        connection.send(envelope("resumed", after=6, replayed=1, truncated=False))
        connection.close(4001, "token expired")

    scripted = ScriptedServer([overloaded, expired])
    try:
        show_embedded(page, daphne, "<!doctype html><title>client</title>")
        events = page.evaluate(
            """async ([port]) => {
                const {EchoClient, NotOpenError} = await import("/static/echo/client.js");
                const client = new EchoClient({
                    url: `ws://127.0.0.1:${port}/ws/`, token: "tok.en-1_2", groups: ["red"],
                    backoff: {first: 400, cap: 800},
                });
                const events = [];
                for (const type of ["open", "close", "reconnecting", "welcome", "broadcast", "resumed"]) {
                    client.on(type, (detail) => events.push([type, detail]));
                }
                const refusals = [];
                client.on("close", () => {
                    try { client.say("red", "too late"); } catch (error) {
                        refusals.push(error instanceof NotOpenError && error.message);
                    }
                });
                client.connect();
                await Promise.race([
                    new Promise((resolve) => client.on("close", (close) => close.reconnect || resolve())),
                    new Promise((resolve) => setTimeout(resolve, 8000)),  // a client that never stops
                ]);
                await new Promise((resolve) => setTimeout(resolve, 2500));  // no third connection
                let badToken = "";
                try { new EchoClient({token: "a:b"}).connect(); } catch (error) { badToken = error.name; }
                return {events, refusals, state: client.state, lastId: client.lastId, badToken};
            }""",
            [scripted.port],
        )
    finally:
        scripted.stop()
    assert scripted.requests == [
        ("/ws/?group=red", "echo.json, bearer.tok.en-1_2"),
        ("/ws/?group=red&after=6", "echo.json, bearer.tok.en-1_2"),
    ]
    kinds = [kind for kind, _ in events["events"]]
    assert kinds == [
        "open",
        "welcome",
        "broadcast",
        "close",
        "reconnecting",
        "open",
        "welcome",
        "broadcast",
        "resumed",
        "close",
    ], kinds
    closes = [detail for kind, detail in events["events"] if kind == "close"]
    assert [(c["code"], c["reason"], c["reconnect"]) for c in closes] == [
        (1013, "try again later", True),
        (4001, "token expired", False),
    ]
    delay = next(detail["delay"] for kind, detail in events["events"] if kind == "reconnecting")
    assert 0 <= delay <= 400  # the first ceiling: full jitter, below it
    assert events["state"] == "closed" and events["lastId"] == 7
    assert events["refusals"] == ["not sent: say in red: the connection is not open (closed)"] * 2
    assert events["badToken"] == "TypeError"


def issue_token(server: DaphneServer, name: str, ttl: int) -> str:
    command = [sys.executable, "manage.py", "token", name, "--ttl", str(ttl)]
    result = subprocess.run(command, cwd=ROOT, env=server.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_client_connects_with_a_token_and_stays_away_once_it_expires(page, daphne):
    """A page with no session connects as the token's user (the token beside echo.json, not in the
    URL), gets that user's pushes, and when the server closes with 4001 at expiry it does not return."""
    token = issue_token(daphne, "admin", ttl=6)
    urls: list[str] = []
    page.on("websocket", lambda websocket: urls.append(websocket.url))
    show_embedded(page, daphne, "<!doctype html><title>token</title>")
    page.evaluate(
        """async ([token]) => {
            const {EchoClient} = await import("/static/echo/client.js");
            const client = new EchoClient({token, backoff: {first: 200, cap: 400}});
            window.seen = [];
            for (const type of ["welcome", "broadcast", "close", "reconnecting"]) {
                client.on(type, (detail) => window.seen.push([type, detail]));
            }
            client.connect();
        }""",
        [token],
    )
    page.wait_for_function("window.seen.length > 0")
    broadcast(daphne, "for the admin alone", "--user", "admin")
    page.wait_for_function("window.seen.some(([type]) => type === 'close')", timeout=15_000)
    page.wait_for_timeout(1500)  # a reconnect would have come within 400 ms
    seen = page.evaluate("window.seen")
    assert [kind for kind, _ in seen] == ["welcome", "broadcast", "close"], seen
    welcome, push, close = (detail for _, detail in seen)
    assert welcome["user"] == "admin"
    assert push["text"] == "for the admin alone" and push["group"].startswith("user:")
    assert (close["code"], close["reason"], close["reconnect"]) == (4001, "token expired", False)
    assert len(urls) == 1 and token not in urls[0]
