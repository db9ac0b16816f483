"""Run N Daphne processes behind nginx on this machine, sharing one Redis and one database.

    .venv/bin/python -m deploy.cluster [--processes 2] [--port 8000]

Daphne listens on the ports after PORT (8001, 8002, ...), nginx on PORT with deploy/nginx.conf,
started once every Daphne answers. Needs nginx (`apt-get install nginx-light`) and a Redis at
REDIS_URL (`./dev cluster` brings up the embedded one). Ctrl-C or SIGTERM stops everything it
started (each process gets one signal) and exits 0.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "nginx.conf"
# Seconds a Daphne has to answer HTTP after it is started (importing Django takes a few).
START_TIMEOUT = 60
# Behind nginx, the client's address and port come in these headers (deploy/nginx.conf sets
# them); X-Forwarded-For's first entry, Daphne's default, is whatever the client claims.
PROXY_HEADERS = [
    "--proxy-headers",
    "--proxy-headers-host",
    "X-Real-IP",
    "--proxy-headers-port",
    "X-Real-Port",
]


class Stop(Exception):
    """SIGINT or SIGTERM: stop everything."""


_stopping = False


def render_nginx_conf(*, listen: int, upstream_ports: list[int], prefix: Path) -> Path:
    """Write deploy/nginx.conf with its placeholders filled in to ``prefix``; return its path."""
    upstreams = "\n".join(f"        server 127.0.0.1:{port} max_fails=0;" for port in upstream_ports)
    text = (
        TEMPLATE.read_text()
        .replace("@LISTEN@", f"127.0.0.1:{listen}")
        .replace("@UPSTREAMS@", upstreams)
        .replace("@PREFIX@", str(prefix))
    )
    path = prefix / "nginx.conf"
    path.write_text(text)
    return path


def start_nginx(*, listen: int, upstream_ports: list[int]) -> subprocess.Popen:
    """Start nginx in the foreground with a rendered configuration in a folder of its own."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    prefix = Path(tempfile.mkdtemp(prefix="echo-nginx-"))
    config = render_nginx_conf(listen=listen, upstream_ports=upstream_ports, prefix=prefix)
    # A process group of its own: the terminal's Ctrl-C reaches the cluster, which stops it once.
    return subprocess.Popen(
        [nginx, "-p", str(prefix), "-c", str(config), "-g", "daemon off;"],
        stdin=subprocess.DEVNULL,
        process_group=0,
    )


def start_daphne(port: int) -> subprocess.Popen:
    """Start one Daphne on ``port``, in a process group of its own (as nginx, see start_nginx)."""
    daphne = str(Path(sys.executable).parent / "daphne")
    # An explicit listen backlog (Twisted's default is 50) and time for handshakes under a reconnect storm.
    listen = ["-e", f"tcp:port={port}:interface=127.0.0.1:backlog=2048", "--websocket_connect_timeout", "30"]
    command = [daphne, *listen, *PROXY_HEADERS, "-v", "0"]
    return subprocess.Popen(
        [*command, "project.asgi:application"], cwd=ROOT, stdin=subprocess.DEVNULL, process_group=0
    )


def answers(port: int) -> bool:
    """Tell whether something answers HTTP on ``port`` (any status: a 503 from /healthz is an answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
            return True
    except urllib.error.HTTPError as error:
        error.close()
        return True
    except OSError:
        return False


def wait_until_answering(processes: dict[int, subprocess.Popen], what: str) -> None:
    """Wait until each process answers on its port; raise SystemExit with one line if one does not."""
    deadline = time.monotonic() + START_TIMEOUT
    waiting = dict(processes)
    while waiting:
        for port, process in list(waiting.items()):
            if process.poll() is not None:
                raise SystemExit(
                    f"cluster: {what} on port {port} exited with {process.returncode}; see above"
                )
            if answers(port):
                del waiting[port]
        if waiting and time.monotonic() > deadline:
            raise SystemExit(
                f"cluster: {what} on ports {sorted(waiting)} did not answer in {START_TIMEOUT} s"
            )
        time.sleep(0.1)


def stop(children: list[subprocess.Popen]) -> None:
    """Send each child one SIGTERM (Daphne closes its WebSockets with 1001) and wait for it."""
    global _stopping
    _stopping = True  # a signal from now on changes nothing
    for child in children:
        if child.poll() is None:
            child.terminate()
    for child in children:
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def on_signal(signum: int, frame) -> None:
    """Stop on the first SIGINT or SIGTERM; later ones must not cut the stop short."""
    global _stopping
    if not _stopping:
        _stopping = True
        raise Stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    ports = [args.port + n for n in range(1, args.processes + 1)]
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    children: list[subprocess.Popen] = []
    try:
        daphnes = {port: start_daphne(port) for port in ports}
        children.extend(daphnes.values())
        # nginx before its upstreams answer would send 502s, and the page's first visit with them.
        wait_until_answering(daphnes, "Daphne")
        nginx = start_nginx(listen=args.port, upstream_ports=ports)
        children.append(nginx)
        wait_until_answering({args.port: nginx}, "nginx")
        print(f"cluster: nginx on http://127.0.0.1:{args.port}/ in front of Daphne on {ports}", flush=True)
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        gone = next(child for child in children if child.poll() is not None)
        print(f"cluster: {Path(gone.args[0]).name} (pid {gone.pid}) exited with {gone.returncode}; stopping")
        return 1
    except Stop:
        return 0
    finally:
        stop(children)


if __name__ == "__main__":
    sys.exit(main())
