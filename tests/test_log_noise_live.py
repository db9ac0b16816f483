"""Hostile HTTP requests cost one log line each, never a traceback (live Daphne)."""

import socket

from tests.servers import DaphneServer


def raw_request(server: DaphneServer, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(request)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    return response


def test_a_request_for_a_foreign_host_gets_400_and_one_warning_line(fresh_daphne):
    """``Host: evil.com`` is answered 400 and logged as one WARNING line, without a traceback.

    Stock Django logs it as an ERROR with a 30-line traceback: 100 such requests made 202 KB of log.
    """
    start = len(fresh_daphne.log())
    for _ in range(3):
        response = raw_request(fresh_daphne, b"GET / HTTP/1.1\r\nHost: evil.com\r\nConnection: close\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 400 ")
    fresh_daphne.wait_for_log("Invalid HTTP_HOST header")
    log = fresh_daphne.log()[start:]
    lines = [line for line in log.splitlines() if '"GET /"' not in line]  # Daphne's access lines
    host_lines = [line for line in lines if "evil.com" in line]
    assert len(host_lines) == 3, lines
    assert all(" WARNING django.security.DisallowedHost " in line for line in host_lines), host_lines
    assert "Traceback" not in log
    assert not [line for line in lines if " ERROR " in line], lines
