"""Raw HTTP/1.1 over a unix socket, sent from a process that has become a given Unix user.

The gateway learns who is calling from SO_PEERCRED, so tests that craft requests byte by byte
(what the docker CLI would never send) must connect as the user they impersonate.
"""

from __future__ import annotations

import json
import os
import pwd
import socket
from collections.abc import Callable
from typing import Any


def request(
    sock_path: str,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, dict[str, Any]]:
    """One request on its own connection; ``raw`` sends exactly those bytes instead."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(120)
        s.connect(sock_path)
        if raw is None:
            lines = [
                f"{method} {path} HTTP/1.1",
                "Host: docker",
                "Connection: close",
                f"Content-Length: {len(body)}",
            ]
            given = headers if headers is not None else {"Content-Type": "application/json"}
            lines += [f"{k}: {v}" for k, v in given.items()]
            raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        s.sendall(raw)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    if b"transfer-encoding: chunked" in head.lower():
        payload = dechunk(payload)
    try:
        return status, json.loads(payload) if payload.strip() else {}
    except ValueError:
        return status, {"raw": payload.decode(errors="replace")}


def dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return out


def as_user(user: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a forked child that has dropped to ``user``; return its JSON-able result."""
    entry = pwd.getpwnam(user)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            try:
                result = {"ok": fn()}
            except Exception as exc:  # reported to the parent
                result = {"error": repr(exc)}
            with os.fdopen(write_fd, "w") as out:
                json.dump(result, out)
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        text = f.read()
    os.waitpid(pid, 0)
    result = json.loads(text)
    if "error" in result:
        raise RuntimeError(result["error"])
    return result["ok"]
