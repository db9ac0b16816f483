"""``./dev``, the README's first command, as a newcomer meets it: stopped with Ctrl-C in a terminal or
with a signal from a script, and failing on a bad environment with a line that says what to do.

Each run gets a Redis URL on a free port (``./dev run`` then starts its own embedded redis-server, and
stops it), a database and a static folder of its own: the shared servers are never touched.
"""

import asyncio
import contextlib
import os
import pty
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import websockets
import websockets.sync.client

from tests.servers import ROOT, free_port

DEV = str(ROOT / "dev")


@pytest.fixture
def dev_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a fresh checkout's ``./dev run``, with a Redis port nothing answers on."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "REDIS_", "DATABASE_"))
    }
    return {
        **env,
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'dev.sqlite3'}",
        "DJANGO_STATIC_ROOT": str(tmp_path / "static"),
        "PYTHONUNBUFFERED": "1",
    }


def wait_until_serving(port: int, output: callable, timeout: float = 90) -> None:
    """Wait until Daphne answers on ``port``; ``output()`` says what happened if it does not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with websockets.sync.client.connect(f"ws://127.0.0.1:{port}/ws/", open_timeout=2):
                return
        except (OSError, websockets.exceptions.WebSocketException):
            time.sleep(0.2)
    raise AssertionError(f"./dev run did not serve on {port}:\n{output()}")


async def close_code_on_stop(port: int, stop: callable) -> int:
    """Hold a WebSocket, call ``stop()``, and return the close code the client got."""
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws/") as ws:
        await ws.send("hi")
        assert await ws.recv() == "Server: Hello. You said: hi"
        stop()
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 20)
        return ws.close_code


def assert_port_closed(port: int) -> None:
    with pytest.raises(OSError):
        websockets.sync.client.connect(f"ws://127.0.0.1:{port}/ws/", open_timeout=2).close()


def assert_clean(output: str) -> None:
    assert "Traceback" not in output and "Error:" not in output, output
    assert "stopped the embedded redis-server" in output, output


def read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the terminal's other end is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


async def test_ctrl_c_in_a_terminal_stops_it_cleanly(dev_env):
    """Ctrl-C (the terminal's SIGINT to the whole foreground group): clients get 1001, Redis and
    Daphne stop, exit 0 or 130, no traceback. It was 254: Daphne got SIGINT twice."""
    port = free_port()
    pid, terminal = pty.fork()
    if pid == 0:  # the child: a session of its own, with the pseudo-terminal as its terminal
        os.chdir(ROOT)
        os.execve(DEV, [DEV, "run", "-b", "127.0.0.1", "-p", str(port)], dev_env)
    output = bytearray()
    status = None
    try:
        os.set_blocking(terminal, False)

        def so_far() -> str:
            with contextlib.suppress(BlockingIOError, OSError):
                output.extend(os.read(terminal, 65536))
            return output.decode(errors="replace")

        await asyncio.to_thread(wait_until_serving, port, so_far)
        code = await close_code_on_stop(port, lambda: os.write(terminal, b"\x03"))
        assert code == 1001
        os.set_blocking(terminal, True)
        _, status = await asyncio.to_thread(os.waitpid, pid, 0)
        output.extend(read_all(terminal))
    finally:
        os.close(terminal)
        if status is None:  # the test failed before ./dev ended: end it
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    text = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) in (0, 130), text
    assert_clean(text)
    assert_port_closed(port)


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
async def test_a_signal_from_a_script_stops_it_cleanly(dev_env, tmp_path, signal_name):
    """Started in the background by a shell script (which makes it ignore SIGINT), ``kill -INT``
    or ``kill -TERM`` stops it as Ctrl-C does. SIGINT was ignored."""
    port = free_port()
    log = tmp_path / "dev.log"
    script = f'"{DEV}" run -b 127.0.0.1 -p {port} >"{log}" 2>&1 & echo $!; wait $!'
    shell = subprocess.Popen(["sh", "-c", script], cwd=ROOT, env=dev_env, stdout=subprocess.PIPE, text=True)
    try:
        dev_pid = int(shell.stdout.readline())
        await asyncio.to_thread(wait_until_serving, port, log.read_text)
        number = getattr(signal, signal_name)
        code = await close_code_on_stop(port, lambda: os.kill(dev_pid, number))
        assert code == 1001
        status = await asyncio.to_thread(shell.wait, 30)
    finally:
        if shell.poll() is None:  # the test failed before ./dev ended: end it, and what it started
            os.kill(dev_pid, signal.SIGTERM)
            shell.wait(30)
        shell.stdout.close()
    assert status in (0, 130), log.read_text()
    assert_clean(log.read_text())
    assert_port_closed(port)


def dev_run_fails(env: dict[str, str]) -> tuple[int, list[str]]:
    result = subprocess.run(
        [DEV, "run", "-b", "127.0.0.1", "-p", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    return result.returncode, lines


def test_production_without_a_secret_key_is_one_line_and_what_to_do(dev_env):
    """``DJANGO_DEBUG=0 ./dev run`` without a key: the settings' line, one of ./dev's, no traceback."""
    code, lines = dev_run_fails({**dev_env, "DJANGO_DEBUG": "0"})
    assert code != 0
    assert len(lines) <= 2, lines
    assert "DJANGO_SECRET_KEY must be set" in lines[0], lines
    assert "Traceback" not in "\n".join(lines)


def test_a_database_that_does_not_answer_is_named_in_one_line(dev_env):
    """A ``DATABASE_URL`` where nothing listens: which database, what to do; no 105-line traceback,
    and never its password."""
    port = free_port()  # nothing listens there
    code, lines = dev_run_fails({**dev_env, "DATABASE_URL": f"postgres://me:s3cret@127.0.0.1:{port}/echo"})
    assert code != 0
    assert len(lines) <= 2, lines
    text = "\n".join(lines)
    assert f"127.0.0.1:{port}" in text and "DATABASE_URL" in text, text
    assert "Traceback" not in text and "s3cret" not in text


def test_an_unknown_command_prints_the_usage(dev_env):
    """``./dev frobnicate`` says what it can do, exit 2."""
    result = subprocess.run([DEV, "frobnicate"], cwd=ROOT, env=dev_env, capture_output=True, text=True)
    assert result.returncode == 2
    assert re.search(r"\./dev run", result.stderr) and "Traceback" not in result.stderr
