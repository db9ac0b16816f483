"""Run N Daphne processes behind nginx on this machine, sharing one Redis and one database.

    .venv/bin/python -m deploy.cluster [--processes 2] [--port 8000]

Daphne listens on the ports after PORT (8001, 8002, ...), nginx on PORT with deploy/nginx.conf.
Needs nginx (`apt-get install nginx-light`) and a Redis at REDIS_URL (`./dev cluster` brings up
the embedded one). Ctrl-C stops everything it started.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "nginx.conf"


def render_nginx_conf(*, listen: int, upstream_ports: list[int], prefix: Path) -> Path:
    """Write deploy/nginx.conf with its placeholders filled in to ``prefix``; return its path."""
    upstreams = "\n".join(f"        server 127.0.0.1:{port};" for port in upstream_ports)
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
    return subprocess.Popen(
        [nginx, "-p", str(prefix), "-c", str(config), "-g", "daemon off;"], stdin=subprocess.DEVNULL
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    daphne = str(Path(sys.executable).parent / "daphne")
    ports = [args.port + n for n in range(1, args.processes + 1)]
    children = [
        subprocess.Popen(
            [
                daphne,
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                "--proxy-headers",
                "-v",
                "0",
                "project.asgi:application",
            ],
            cwd=ROOT,
        )
        for port in ports
    ]
    children.append(start_nginx(listen=args.port, upstream_ports=ports))
    print(f"cluster: nginx on http://127.0.0.1:{args.port}/ in front of Daphne on {ports}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: [child.terminate() for child in children])
    try:
        return children[0].wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(timeout=15)


if __name__ == "__main__":
    sys.exit(main())
