"""The one synchronous unix-socket HTTP client (the ds01 command, its doctor, first-day help)."""

from __future__ import annotations

import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler

import pytest

from ds01d import unix_http


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"path": "%s"}' % self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Thing", "yes")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def test_a_request_over_a_unix_socket(tmp_path) -> None:
    path = str(tmp_path / "s.sock")
    server = _Server(path, _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        answer = unix_http.request(path, "GET", "/ds01/v1/whoami", timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    assert answer.status == 200 and answer.headers["x-thing"] == "yes"
    assert answer.json() == {"path": "/ds01/v1/whoami"}


def test_no_server_or_not_http_is_an_oserror(tmp_path) -> None:
    with pytest.raises(OSError):
        unix_http.request(str(tmp_path / "none.sock"), "GET", "/", timeout=2)
    path = str(tmp_path / "mute.sock")
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(path)
    mute.listen(1)

    def babble() -> None:
        conn, _ = mute.accept()
        conn.recv(1024)
        conn.sendall(b"hello, not HTTP\r\n\r\n")
        conn.close()

    thread = threading.Thread(target=babble, daemon=True)
    thread.start()
    try:
        with pytest.raises(OSError, match="not an HTTP server"):
            unix_http.request(path, "GET", "/", timeout=5)
    finally:
        thread.join(5)
        mute.close()


def test_socket_path() -> None:
    assert unix_http.socket_path("unix:///run/d.sock") == "/run/d.sock"
    with pytest.raises(ValueError, match="unix:///path"):
        unix_http.socket_path("tcp://1.2.3.4:2375")
