"""Two Daphne processes behind nginx, with the configuration the project ships (deploy/nginx.conf)."""

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import websockets

from deploy.cluster import start_nginx
from tests.servers import ROOT, DaphneServer, free_port, wait_for_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
pytestmark = pytest.mark.skipif(
    not Path(NGINX).exists(),
    reason="nginx is not installed (apt-get install nginx-light): proxy tests skipped",
)


@pytest.fixture(scope="module")
def proxy(daphne, daphne_b):
    port = free_port()
    nginx = start_nginx(listen=port, upstream_ports=[daphne.port, daphne_b.port])
    wait_for_port(port, nginx, "nginx")
    yield port
    nginx.terminate()
    nginx.wait(timeout=10)


def connections_logged(server) -> int:
    return server.log().count(" connected path=/ws/")


async def test_a_broadcast_reaches_clients_on_every_process_through_nginx(
    proxy, daphne, daphne_b, daphne_env
):
    """WebSockets through nginx spread over both processes, echo, and all get a broadcast."""
    before = connections_logged(daphne), connections_logged(daphne_b)
    url = f"ws://127.0.0.1:{proxy}/ws/"
    clients = [await websockets.connect(url, origin=f"http://127.0.0.1:{proxy}") for _ in range(20)]
    try:
        for n, ws in enumerate(clients):
            await ws.send(f"via nginx {n}")
            assert await asyncio.wait_for(ws.recv(), 5) == f"Server: Hello. You said: via nginx {n}"
        spread = connections_logged(daphne) - before[0], connections_logged(daphne_b) - before[1]
        assert sum(spread) == 20 and min(spread) >= 5, f"connections per process: {spread}"
        command = [sys.executable, "manage.py", "broadcast", "through the proxy"]
        sent = subprocess.run(command, cwd=ROOT, env=daphne.env, capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        for ws in clients:
            assert await asyncio.wait_for(ws.recv(), 5) == "Server broadcast: through the proxy"
    finally:
        for ws in clients:
            await ws.close()


def test_plain_http_goes_through_nginx_too(proxy):
    """The page and the one-line 400 of a plain GET on /ws/ come back through the proxy."""
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy}/", timeout=5) as response:
        assert b'<input id="message"' in response.read()
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"http://127.0.0.1:{proxy}/ws/", timeout=5)
    assert caught.value.code == 400
    caught.value.close()


def test_nginx_serves_as_soon_as_an_upstream_answers_again(daphne_env):
    """Both Daphnes down for a moment (a restart, a slow start): once one answers, nginx uses it at
    once. nginx's default (max_fails=1 fail_timeout=10s) gave 10 s of 502s after one failed try."""
    ports = [free_port(), free_port()]
    port = free_port()
    nginx = start_nginx(listen=port, upstream_ports=ports)
    server = DaphneServer(env=daphne_env)
    server.port = ports[0]
    try:
        wait_for_port(port, nginx, "nginx")
        # Nothing upstream yet; enough tries that every nginx worker has seen both fail.
        assert {http_status(f"http://127.0.0.1:{port}/") for _ in range(20)} == {502}
        server.start()
        assert [http_status(f"http://127.0.0.1:{port}/") for _ in range(10)] == [200] * 10
    finally:
        server.stop()
        nginx.terminate()
        nginx.wait(timeout=10)
    server.assert_no_tracebacks()


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        error.close()
        return error.code


def free_port_block(count: int) -> int:
    """Return a port P such that P, P+1, ..., P+count-1 are all free (./dev cluster's layout)."""
    while True:
        first = free_port()
        try:
            for port in range(first, first + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue


async def test_dev_cluster_announces_nginx_once_it_serves_and_logs_real_client_addresses(
    daphne_env, tmp_path
):
    """``./dev cluster``'s nginx answers as soon as it is announced, WebSockets included; the Daphne
    log names the client's own address and port, not nginx's (``peer=127.0.0.1:0``); Ctrl-C stops
    it all with exit 0."""
    port = free_port_block(3)
    log = tmp_path / "cluster.log"
    with log.open("wb") as output:
        cluster = subprocess.Popen(
            [sys.executable, "-u", "-m", "deploy.cluster", "--processes", "2", "--port", str(port)],
            cwd=ROOT,
            env={**os.environ, **daphne_env},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "cluster: nginx on" not in log.read_text():
            assert cluster.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        announced = time.monotonic()
        assert http_status(f"http://127.0.0.1:{port}/") == 200, log.read_text()
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws/") as ws:
            await ws.send("through the cluster")
            assert await asyncio.wait_for(ws.recv(), 5) == "Server: Hello. You said: through the cluster"
            client_port = ws.local_address[1]
        assert f"peer=127.0.0.1:{client_port} connected path=/ws/" in log.read_text(), log.read_text()
        # nginx's idle keep-alive connections to Daphne close before Daphne's 10 s header deadline
        # would drop them, with a WARNING each.
        time.sleep(max(0.0, 11 - (time.monotonic() - announced)))
        assert "request headers incomplete" not in log.read_text(), log.read_text()
        cluster.send_signal(signal.SIGINT)
        assert cluster.wait(timeout=30) == 0, log.read_text()
    finally:
        if cluster.poll() is None:
            cluster.terminate()
            cluster.wait(timeout=30)
    assert "Traceback" not in log.read_text()
    for closed in (port, port + 1, port + 2):
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", closed), timeout=1).close()
