"""The production setup in deploy/, run here as far as a test can: the systemd units checked by
``systemd-analyze verify`` and their Daphne command line started on a socket the test binds (as
systemd passes it), behind the shipped nginx site with TLS; the supervisor programs under a real
supervisord. Paths the files name for a server (/srv/echo, /etc/echo/env, ...) are replaced by the
test's own, each replacement checked, so that the files cannot drift from what is tested."""

import asyncio
import configparser
import http.client
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from tests.servers import ROOT, free_port
from tests.test_tls_live import throwaway_certificate

DEPLOY = ROOT / "deploy"
UNITS = DEPLOY / "systemd"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
SUPERVISORD = shutil.which("supervisord")
needs_nginx = pytest.mark.skipif(
    not Path(NGINX).exists(), reason="nginx is not installed (apt-get install nginx-light)"
)


def replaced(text: str, replacements: dict[str, str]) -> str:
    """Apply each replacement, failing if the text no longer has what it replaces."""
    for old, new in replacements.items():
        assert old in text, f"{old!r} is no longer in the file: update the test with it"
        text = text.replace(old, new)
    return text


def unit_command(unit: str, port: int) -> list[str]:
    """The ExecStart of ``unit`` as systemd runs it for instance ``port``, in this checkout."""
    text = (UNITS / unit).read_text()
    line = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    return shlex.split(
        replaced(line.removeprefix("ExecStart="), {"/srv/echo": str(ROOT)}).replace("%i", str(port))
    )


def production_env(daphne_env: dict[str, str]) -> dict[str, str]:
    """deploy/echo.env with its EDIT lines filled in as a person would, for this test's servers."""
    env = {}
    for line in (DEPLOY / "echo.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    assert env["DJANGO_DEBUG"] == "0" and env["DJANGO_BEHIND_PROXY"] == "1"
    edits = {
        "DJANGO_SECRET_KEY": daphne_env["DJANGO_SECRET_KEY"],
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
        "DATABASE_URL": daphne_env["DATABASE_URL"],
        "REDIS_URL": daphne_env["REDIS_URL"],
        "DJANGO_STATIC_ROOT": daphne_env["DJANGO_STATIC_ROOT"],
    }
    assert set(edits) <= set(env)
    return {**os.environ, **env, **edits}


def listening_socket() -> socket.socket:
    """A listening TCP socket on a free loopback port, as systemd or supervisord would hold it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def start_on_fd(command: list[str], sock: socket.socket, fd: int, env: dict, log: Path) -> subprocess.Popen:
    """Start ``command`` with ``sock`` as its file descriptor ``fd``, as its service manager would."""
    place = "import os, sys; os.dup2(int(sys.argv[1]), int(sys.argv[2])); os.execv(sys.argv[3], sys.argv[3:])"
    with log.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-c", place, str(sock.fileno()), str(fd), *command],
            cwd=ROOT,
            env=env,
            pass_fds=(sock.fileno(),),
            stdin=subprocess.DEVNULL if fd != 0 else None,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def wait_for_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """Wait until ``url`` gets an HTTP answer, any answer (a redirect to https included)."""
    parts = urllib.parse.urlsplit(url)
    deadline = time.monotonic() + timeout
    while True:
        if parts.scheme == "https":
            context = ssl._create_unverified_context()  # only: is anyone there yet?
            connection = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=2, context=context)
        else:
            connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=2)
        try:
            connection.request("GET", parts.path)
            connection.getresponse().close()
            return
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        finally:
            connection.close()


def stop(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    return process.wait(timeout=30)


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (no systemd here)")
def test_the_systemd_units_pass_systemd_analyze_verify(tmp_path):
    """Every unit, as installed for two Daphne instances: no error, no warning."""
    for unit in UNITS.iterdir():
        (tmp_path / unit.name).write_text(unit.read_text().replace("/srv/echo", str(ROOT)))
    names = ["echo-daphne@8001.socket", "echo-daphne@8001.service", "echo-daphne@8002.service"]
    names.append("echo-migrate.service")
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", *(str(tmp_path / name) for name in names)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


def test_the_migrate_units_steps_run_against_a_fresh_database(daphne_env, tmp_path):
    """echo-migrate.service's ExecStart lines, in order, on an empty database: each exits 0."""
    env = production_env(daphne_env)
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    env["DJANGO_STATIC_ROOT"] = str(tmp_path / "static")
    text = (UNITS / "echo-migrate.service").read_text()
    steps = [line.removeprefix("ExecStart=") for line in text.splitlines() if line.startswith("ExecStart=")]
    assert len(steps) == 3
    for step in steps:
        command = shlex.split(replaced(step, {"/srv/echo": str(ROOT)}))
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (step, done.stderr)
    assert (tmp_path / "static" / "echo" / "chat.js").exists()


def write_nginx(tmp_path: Path, *, daphne_ports: list[int], static_root: str) -> tuple[Path, int, int, Path]:
    """Render deploy/nginx-site.conf for this machine inside a minimal nginx.conf, as Debian's
    includes sites-enabled; return the configuration, the http and https ports and the certificate."""
    certificate, key = throwaway_certificate(tmp_path)
    http_port, https_port = free_port(), free_port()
    upstreams = "\n    ".join(f"server 127.0.0.1:{port} max_fails=0;" for port in daphne_ports)
    site = replaced(
        (DEPLOY / "nginx-site.conf").read_text(),
        {
            "server 127.0.0.1:8001 max_fails=0;\n    server 127.0.0.1:8002 max_fails=0;": upstreams,
            "listen 80;": f"listen 127.0.0.1:{http_port};",
            "listen 443 ssl;": f"listen 127.0.0.1:{https_port} ssl;",
            "/etc/letsencrypt/live/echo.example.com/fullchain.pem": str(certificate),
            "/etc/letsencrypt/live/echo.example.com/privkey.pem": str(key),
            "/var/lib/echo/static/": static_root.rstrip("/") + "/",
        },
    )
    (tmp_path / "site.conf").write_text(site)
    temp = "\n".join(
        f"    {name}_temp_path {tmp_path}/{name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    mime = "    include /etc/nginx/mime.types;" if Path("/etc/nginx/mime.types").exists() else ""
    # As root, nginx's workers would run as nobody, who may not read the test's folders.
    user = "user root;\n" if os.geteuid() == 0 else ""
    config = tmp_path / "nginx.conf"
    config.write_text(
        f"{user}pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log warn;\nevents {{}}\n"
        f"http {{\n    access_log off;\n{temp}\n{mime}\n    include {tmp_path}/site.conf;\n}}\n"
    )
    return config, http_port, https_port, certificate


@needs_nginx
def test_the_production_site_passes_nginx_t(tmp_path):
    """``nginx -t`` accepts deploy/nginx-site.conf (with a throwaway certificate), with no warning."""
    config, *_ = write_nginx(tmp_path, daphne_ports=[free_port(), free_port()], static_root=str(tmp_path))
    result = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(config)], capture_output=True, text=True
    )
    assert result.returncode == 0 and "test is successful" in result.stderr, result.stderr
    assert "[warn]" not in result.stderr and "[emerg]" not in result.stderr, result.stderr


@pytest.fixture
def unit_daphne(daphne_env, tmp_path) -> Iterator[tuple[int, Path]]:
    """Daphne started by echo-daphne@.service's command line on a socket the test holds as fd 3."""
    sock = listening_socket()
    port = sock.getsockname()[1]
    command = unit_command("echo-daphne@.service", port)
    assert "--fd" in command and command[command.index("--fd") + 1] == "3"
    log = tmp_path / "daphne.log"
    daphne = start_on_fd(command, sock, 3, production_env(daphne_env), log)
    sock.close()  # the service manager's copy; Daphne has its own
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", daphne, log)
        yield port, log
    finally:
        assert stop(daphne) == 0, log.read_text()
    assert "Traceback" not in log.read_text()


@needs_nginx
async def test_the_unit_serves_wss_behind_the_production_site_with_real_client_addresses(
    unit_daphne, daphne_env, tmp_path
):
    """Browser → nginx (TLS, the shipped site) → Daphne on systemd's socket: wss echo, the page
    over https, static files from nginx, http redirected; Daphne logs the client's own port."""
    daphne_port, daphne_log = unit_daphne
    config, http_port, https_port, certificate = write_nginx(
        tmp_path, daphne_ports=[daphne_port], static_root=daphne_env["DJANGO_STATIC_ROOT"]
    )
    nginx = subprocess.Popen([NGINX, "-p", str(tmp_path), "-c", str(config), "-g", "daemon off;"])
    try:
        base = f"https://127.0.0.1:{https_port}"
        wait_for_http(base + "/healthz", nginx, tmp_path / "error.log")
        trusted = ssl.create_default_context(cafile=str(certificate))
        async with websockets.connect(
            f"wss://127.0.0.1:{https_port}/ws", ssl=trusted, origin=base, open_timeout=10
        ) as ws:
            await ws.send("through TLS")
            assert await asyncio.wait_for(ws.recv(), 5) == "Server: Hello. You said: through TLS"
            client_port = ws.local_address[1]
        assert f"peer=127.0.0.1:{client_port} connected path=/ws" in daphne_log.read_text()
        with urllib.request.urlopen(base + "/", context=trusted, timeout=10) as page:
            assert b'<input id="message"' in page.read()
        with urllib.request.urlopen(base + "/static/echo/chat.css", context=trusted, timeout=10) as style:
            assert style.headers["Expires"] and b".log" in style.read()
        status, location = redirect_of(f"http://127.0.0.1:{http_port}/admin/")
        assert (status, location) == (301, "https://127.0.0.1/admin/")
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)


def redirect_of(url: str) -> tuple[int, str]:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    try:
        urllib.request.build_opener(NoRedirect).open(url, timeout=10).close()
    except urllib.error.HTTPError as error:
        error.close()
        return error.code, error.headers["Location"]
    raise AssertionError(f"{url} was not redirected")


def supervisor_programs() -> dict[str, dict[str, str]]:
    parser = configparser.RawConfigParser()
    parser.read(DEPLOY / "supervisor" / "echo.conf")
    return {name: dict(parser[name]) for name in parser.sections() if name.startswith("fcgi-program:")}


def test_supervisor_and_systemd_serve_the_ports_the_site_balances():
    """One process per port the nginx site lists, with the same Daphne options, either way."""
    site = (DEPLOY / "nginx-site.conf").read_text()
    site_ports = {
        int(line.split(":")[1].split()[0]) for line in site.splitlines() if "server 127.0.0.1:" in line
    }
    programs = supervisor_programs()
    assert {int(program["socket"].rsplit(":", 1)[1]) for program in programs.values()} == site_ports
    unit_options = unit_command("echo-daphne@.service", 0)[1:]
    for program in programs.values():
        shell_line = shlex.split(program["command"])[-1]
        daphne = shlex.split(shell_line.split("exec ", 1)[1])
        assert daphne[1:] == [option if option != "3" else "0" for option in unit_options]


@pytest.mark.skipif(SUPERVISORD is None, reason="supervisor is not installed (apt-get install supervisor)")
async def test_the_supervisor_programs_serve_websockets_under_supervisord(daphne_env, tmp_path):
    """deploy/supervisor/echo.conf under a real supervisord: every program serves ws/ on its
    socket; stopping supervisord stops them."""
    env_file = tmp_path / "env"
    env = production_env(daphne_env)
    env_file.write_text(
        "".join(f"{key}={env[key]}\n" for key in env if key.startswith(("DJANGO_", "DATABASE_", "REDIS_")))
    )
    ports = {name: free_port() for name in supervisor_programs()}
    programs = (DEPLOY / "supervisor" / "echo.conf").read_text()
    programs = replaced(programs, {"/srv/echo": str(ROOT), "/etc/echo/env": str(env_file), "user=echo\n": ""})
    programs = replaced(programs, {"/var/log/supervisor/": f"{tmp_path}/"})
    for name, port in ports.items():
        old = name.removeprefix("fcgi-program:echo-")
        programs = replaced(programs, {f"socket=tcp://127.0.0.1:{old}": f"socket=tcp://127.0.0.1:{port}"})
    config = tmp_path / "supervisord.conf"
    config.write_text(
        f"[supervisord]\nnodaemon=true\nlogfile={tmp_path}/supervisord.log\npidfile={tmp_path}/supervisord.pid\n"
        f"childlogdir={tmp_path}\n\n{programs}"
    )
    log = tmp_path / "supervisord.log"
    supervisord = subprocess.Popen([SUPERVISORD, "-c", str(config)], cwd=tmp_path, env=os.environ)
    try:
        for port in ports.values():
            wait_for_http(f"http://127.0.0.1:{port}/healthz", supervisord, log)
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws/", open_timeout=10) as ws:
                await ws.send(f"on {port}")
                assert await asyncio.wait_for(ws.recv(), 5) == f"Server: Hello. You said: on {port}"
    finally:
        assert stop(supervisord) == 0, log.read_text()
    for port in ports.values():
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
