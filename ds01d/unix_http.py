"""HTTP over a unix socket: the one place a socket path is read and a plain request is made.

ds01d's own calls to dockerd are asynchronous (``ds01d.docker_client``, on aiohttp) and take
their socket path from ``socket_path`` here; the ``ds01`` command and ``ds01 doctor`` make one
synchronous request at a time with ``request``, without loading aiohttp.
"""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass
from typing import Any


def socket_path(docker_host: str) -> str:
    """The path of a ``unix:///path`` Docker host; ValueError for anything else."""
    if not docker_host.startswith("unix://"):
        raise ValueError(f"--docker-host must be unix:///path, not {docker_host!r}")
    return docker_host[len("unix://") :]


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        """The body as JSON; None when empty. ValueError when it is not JSON."""
        return json.loads(self.body) if self.body.strip() else None


def request(
    sock: str,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Answer:
    """One HTTP request to the server on unix socket ``sock``.

    OSError when the socket cannot be reached or what answers does not speak HTTP.
    """
    conn = _UnixConnection(sock, timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        got = {k.lower(): v for k, v in resp.getheaders()}
    except http.client.HTTPException as exc:
        raise OSError(f"not an HTTP server ({exc.__class__.__name__})") from exc
    finally:
        conn.close()
    return Answer(resp.status, got, data)
