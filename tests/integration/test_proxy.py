"""The gateway's data plane in front of a real dockerd, driven by the real docker CLI.

A pass-through handler forwards everything (hijacking attach and exec start, as dockerd does),
so these tests show that the proxy alone is transparent: run, run -i with stdin closed,
exec, logs -f, cp both ways, build, events, ps.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.server import Gateway
from gateway.types import Client, Forward, Reply, RequestHead
from tests.harness.dockerd import PrivateDockerd, docker
from tests.harness.host_ledger import temp_dir
from tests.harness.images import import_busybox_image

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("dockerd") or not shutil.which("docker"),
        reason="needs root, dockerd and the docker CLI",
    ),
]

_ATTACH = re.compile(r"^(/v[0-9.]+)?/containers/[^/]+/attach(\?|$)")
_EXEC_START = re.compile(r"^(/v[0-9.]+)?/exec/[^/]+/start(\?|$)")


class PassThrough:
    """Forwards every request; hijacks the routes dockerd hijacks."""

    def __init__(self) -> None:
        self.requests: list[tuple[Client, str, str]] = []

    def body_limit(self, client: Client, head: RequestHead) -> int | None:
        # exec start's small JSON body says whether the stream is detached.
        return 65536 if _EXEC_START.match(head.target) else None

    async def decide(
        self, client: Client, head: RequestHead, body: bytes | None
    ) -> Forward | Reply:
        self.requests.append((client, head.method, head.target))
        hijack = bool(_ATTACH.match(head.target))
        if _EXEC_START.match(head.target):
            try:
                hijack = not json.loads(body or b"{}").get("Detach")
            except (ValueError, AttributeError):
                hijack = True
        return Forward(head, hijack=hijack)


class GatewayThread:
    """A Gateway on its own event loop thread, so tests can block on docker CLI calls."""

    def __init__(self, upstream: str, path: str) -> None:
        self.handler = PassThrough()
        self.path = path
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.gateway = Gateway(self.handler, upstream)
        self.call(self.gateway.start(path))

    @property
    def host(self) -> str:
        return f"unix://{self.path}"

    def call(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def connections(self) -> int:
        async def count() -> int:
            return self.gateway.connections

        return self.call(count())

    def stop(self) -> None:
        try:
            self.call(self.gateway.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture(scope="module")
def dockerd() -> Iterator[PrivateDockerd]:
    base = temp_dir("ds01gw")
    daemon = PrivateDockerd(base)
    try:
        daemon.start()
        import_busybox_image(daemon.host)
        yield daemon
    finally:
        daemon.cleanup()


@pytest.fixture(scope="module")
def gw(dockerd: PrivateDockerd) -> Iterator[GatewayThread]:
    thread = GatewayThread(dockerd.socket_path, os.path.join(os.fspath(dockerd.base), "gw.sock"))
    try:
        yield thread
    finally:
        thread.stop()


@pytest.fixture
def name(dockerd: PrivateDockerd) -> Iterator[str]:
    """A unique container name, removed after the test."""
    value = f"gw-{uuid.uuid4().hex[:10]}"
    yield value
    docker("rm", "-f", value, host=dockerd.host)


IMAGE = "ds01-busybox:latest"


def via(gw: GatewayThread, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    result = docker(*args, host=gw.host, **kwargs)
    return result


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}: {result.stderr}"
    return result.stdout


def test_version_negotiates_through_the_gateway(gw, dockerd):
    """`docker version` (HEAD /_ping, version negotiation) sees the real daemon."""
    through = ok(via(gw, "version", "--format", "{{.Server.Version}} {{.Server.APIVersion}}"))
    direct = ok(dockerd.docker("version", "--format", "{{.Server.Version}} {{.Server.APIVersion}}"))
    assert through == direct
    assert any(method == "HEAD" and "/_ping" in target for _, method, target in gw.handler.requests)


def test_peer_credentials_reach_the_handler(gw):
    ok(via(gw, "info", "--format", "{{.ID}}"))
    peer = gw.handler.requests[-1][0].peer
    assert (peer.uid, peer.gid) == (os.getuid(), os.getgid()) and peer.pid > 0


def test_head_ping_over_raw_socket(gw):
    """HEAD /_ping answers with headers only, and the connection stays usable."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(gw.path)
        sock.sendall(
            b"HEAD /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"
            b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"
        )
        data = b""
        while not data.endswith(b"\r\n\r\nOK"):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Api-Version" in head
    assert rest.startswith(b"HTTP/1.1 200")  # no body bytes after the HEAD response


def test_run_rm_echo(gw):
    assert ok(via(gw, "run", "--rm", IMAGE, "echo", "hi")) == "hi\n"


def test_run_interactive_with_stdin_closed(gw):
    """`echo hello | docker run -i --rm img cat`: stdin EOF crosses the half-close."""
    result = via(gw, "run", "-i", "--rm", IMAGE, "cat", input="hello\n", timeout=60)
    assert ok(result) == "hello\n"


def test_run_interactive_binary_stdin(gw):
    """Bytes through a hijacked stream arrive unchanged."""
    payload = os.urandom(300_000).hex()
    result = via(gw, "run", "-i", "--rm", IMAGE, "wc", "-c", input=payload, timeout=60)
    assert ok(result).strip() == str(len(payload))


def test_exec(gw, name):
    ok(via(gw, "run", "-d", "--name", name, IMAGE, "sleep", "300"))
    assert ok(via(gw, "exec", name, "echo", "from-exec")) == "from-exec\n"
    assert ok(via(gw, "exec", "-i", name, "cat", input="piped\n")) == "piped\n"
    failing = via(gw, "exec", name, "sh", "-c", "exit 3")
    assert failing.returncode == 3
    ok(via(gw, "exec", "-d", name, "touch", "/detached"))
    deadline = time.monotonic() + 10
    while via(gw, "exec", name, "test", "-e", "/detached").returncode != 0:
        assert time.monotonic() < deadline, "detached exec never ran"
        time.sleep(0.1)


def test_logs_follow_streams_as_lines_are_written(gw, name):
    """`docker logs -f` shows the first line while the container is still running."""
    ok(via(gw, "run", "-d", "--name", name, IMAGE, "sh", "-c", "echo first; sleep 3; echo second"))
    env = dict(os.environ, DOCKER_HOST=gw.host)
    started = time.monotonic()
    proc = subprocess.Popen(
        ["docker", "logs", "-f", name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        first_at = time.monotonic() - started
        second = proc.stdout.readline()
        second_at = time.monotonic() - started
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()
    assert (first, second) == (b"first\n", b"second\n")
    assert first_at < 2.5 and second_at - first_at > 1.0


def test_logs_follow_interrupted_leaves_no_connection(gw, name):
    """Killing `docker logs -f` ends the gateway's connection (and dockerd's follow)."""
    ok(via(gw, "run", "-d", "--name", name, IMAGE, "sh", "-c", "echo up; sleep 300"))
    env = dict(os.environ, DOCKER_HOST=gw.host)
    proc = subprocess.Popen(["docker", "logs", "-f", name], stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while gw.connections() > 0:
        assert time.monotonic() < deadline, "gateway kept a dead client's connection"
        time.sleep(0.1)


def test_cp_in_and_out(gw, name, tmp_path: Path):
    """`docker cp` both ways (PUT and GET /archive, plus the HEAD stat) is byte-exact."""
    ok(via(gw, "run", "-d", "--name", name, IMAGE, "sleep", "300"))
    src = tmp_path / "blob.bin"
    src.write_bytes(os.urandom(8 * 1024 * 1024 + 123))
    ok(via(gw, "cp", os.fspath(src), f"{name}:/tmp/blob.bin"))
    assert ok(via(gw, "exec", name, "wc", "-c", "/tmp/blob.bin")).split()[0] == str(
        src.stat().st_size
    )
    out = tmp_path / "back.bin"
    ok(via(gw, "cp", f"{name}:/tmp/blob.bin", os.fspath(out)))
    assert out.read_bytes() == src.read_bytes()
    missing = via(gw, "cp", f"{name}:/no/such/file", os.fspath(tmp_path / "x"))
    assert missing.returncode != 0 and "Could not find the file" in missing.stderr


def test_build_with_context(gw, tmp_path: Path):
    """The classic builder's streamed context and progress stream pass through."""
    (tmp_path / "Dockerfile").write_text(
        f"FROM {IMAGE}\nCOPY data.txt /data.txt\nRUN echo x > /x\n"
    )
    (tmp_path / "data.txt").write_text("context-file\n")
    tag = f"gw-build-{uuid.uuid4().hex[:8]}"
    try:
        result = via(gw, "build", "-t", tag, os.fspath(tmp_path), env={"DOCKER_BUILDKIT": "0"})
        ok(result)
        assert "Successfully built" in result.stdout
        out = ok(via(gw, "run", "--rm", tag, "cat", "/x", "/data.txt"))
        assert out == "x\ncontext-file\n"
    finally:
        via(gw, "rmi", "-f", tag)


def test_events_since_until(gw, name):
    """A bounded `docker events` stream ends by itself and holds what happened."""
    since = int(time.time()) - 1
    ok(via(gw, "create", "--name", name, IMAGE, "true"))
    ok(via(gw, "rm", name))
    until = int(time.time()) + 1
    time.sleep(1.1)
    out = ok(
        via(
            gw,
            "events",
            "--since",
            str(since),
            "--until",
            str(until),
            "--filter",
            f"container={name}",
            "--format",
            "{{.Action}}",
            timeout=30,
        )
    )
    actions = out.split()
    assert "create" in actions and "destroy" in actions


def test_ps_matches_direct(gw, dockerd, name):
    ok(via(gw, "run", "-d", "--name", name, IMAGE, "sleep", "300"))
    through = ok(via(gw, "ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Names}}"))
    direct = ok(dockerd.docker("ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Names}}"))
    assert name in through and sorted(through.splitlines()) == sorted(direct.splitlines())
