"""Two Daphne processes behind nginx, with the configuration the project ships (deploy/nginx.conf)."""

import asyncio
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import websockets

from deploy.cluster import start_nginx
from tests.servers import ROOT, free_port, wait_for_port

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
