"""The chat page and the admin in a real Chromium (Debian's), driven by Playwright, against live servers.

Screenshots go to artifacts/ (git-ignored) for a person to look at.
"""

import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

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
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
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
    for _ in range(40):  # presence rows are written every PRESENCE_INTERVAL (0.5 s here)
        admin_tab.goto(daphne.http_url + "/admin/echo/connection/")
        if admin_tab.locator("#result_list td.field-user", has_text="admin").count():
            break
        admin_tab.wait_for_timeout(250)
    assert admin_tab.locator("#result_list td.field-user", has_text="admin").count() == 1
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
