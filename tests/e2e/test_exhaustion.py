"""One user holding 1,100 idle gateway connections does not take DS01 away from anyone else.

A ds01d of its own, started with the open-file limit systemd gives a unit by default (1024,
soft and hard, so ds01d cannot raise it), in front of a private dockerd. e2e-alice opens 1,100
connections to the gateway and keeps them; e2e-bob must still be served, and ds01d's own
work (the plugin, its dockerd calls, the lifecycle loop, the reconcile) must not run out of
file descriptors.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import POLICY
from tests.stack.ds01 import IMAGE, REPO, Ds01Stack, user_python

pytestmark = [pytest.mark.docker, pytest.mark.e2e]

ALICE, BOB = "e2e-alice", "e2e-bob"
NOFILE = 1024
CONNECTIONS = 1100
PER_USER = 64  # ds01d's default --gateway-max-per-user

# Runs as ALICE: open the connections, wait until the gateway has answered every one it
# refuses, report, then hold the rest until stdin closes.
HOLDER = r"""
import json, resource, select, socket, sys, time
path, count, keep = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 256), hard))
socks = []
for _ in range(count):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    socks.append(s)
poller = select.poll()
for s in socks:
    poller.register(s.fileno(), select.POLLIN)
deadline = time.monotonic() + 60
ready = set()
while time.monotonic() < deadline and count - len(ready) > keep:
    ready |= {fd for fd, _ in poller.poll(500)}
statuses, message, held = {}, None, 0
for s in socks:
    if s.fileno() not in ready:
        held += 1
        continue
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.1 ") else "none"
    statuses[status] = statuses.get(status, 0) + 1
    message = message or json.loads(data.partition(b"\r\n\r\n")[2])["message"]
    s.close()
print(json.dumps({"held": held, "statuses": statuses, "message": message}), flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="module")
def low_fd_stack(users):
    base = Path(tempfile.mkdtemp(prefix="ds01x-", dir="/tmp"))
    # Held connections stay held for the whole test: the caps are under test, not timeouts.
    stack = Ds01Stack(base, POLICY, nofile=NOFILE, extra_args=("--gateway-head-timeout", "300"))
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def _holder(stack: Ds01Stack) -> subprocess.Popen[str]:
    env = [f"PYTHONPATH={REPO}", "HOME=/tmp"]
    cmd = [user_python(), "-c", HOLDER, str(stack.gateway_socket), str(CONNECTIONS), str(PER_USER)]
    return subprocess.Popen(
        ["runuser", "-u", ALICE, "--", "env", *env, *cmd],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/tmp",
    )


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_one_users_idle_connections_leave_everyone_else_served(low_fd_stack):
    stack = low_fd_stack
    assert stack.proc is not None
    limits = Path(f"/proc/{stack.proc.pid}/limits").read_text()
    assert any(
        line.startswith("Max open files") and " 1024 " in line for line in limits.splitlines()
    )
    assert stack.docker("ps", user=BOB).returncode == 0
    log_start = stack.log.stat().st_size

    holder = _holder(stack)
    try:
        line = holder.stdout.readline()
        assert line, holder.stderr.read() if holder.poll() is not None else "holder said nothing"
        report = json.loads(line)
        # Alice keeps her 64; every other connection is answered 429 at once and closed.
        assert report["held"] == PER_USER
        assert report["statuses"] == {"429": CONNECTIONS - PER_USER}
        assert report["message"].startswith(
            "ds01: new connection to the Docker socket refused: uid "
        )
        assert "at most 64 per user" in report["message"] and "To fix:" in report["message"]
        # ds01d keeps its reserve: far below its limit while Alice holds her connections.
        assert _open_fds(stack.proc.pid) < NOFILE - 256

        # Bob is served: lists, a run (plugin, ds01d's dockerd calls, events, reconcile).
        for _ in range(3):
            ps = stack.docker("ps", user=BOB)
            assert ps.returncode == 0, ps.stderr
        run = stack.docker("run", "--rm", IMAGE, "echo", "still-here", user=BOB)
        assert run.returncode == 0 and "still-here" in run.stdout, run.stderr
        # Alice's next command is refused with the explanation, not left hanging.
        mine = stack.docker("ps", user=ALICE, timeout=30)
        assert mine.returncode != 0
        assert "ds01: new connection to the Docker socket refused" in mine.stderr
        # The lifecycle loop samples every 2 s (the policy's sample_interval): give it turns.
        time.sleep(5)
        assert stack.docker("ps", user=BOB).returncode == 0
    finally:
        if holder.stdin is not None:
            holder.stdin.close()
        holder.wait(timeout=30)

    log = stack.log.read_bytes()[log_start:].decode(errors="replace")
    for bad in ("Too many open files", "EMFILE", "lifecycle sample failed", "reconcile failed"):
        assert bad not in log, bad
    assert "gateway: refused a connection from uid" in log  # the administrator is told
    # Alice's slots come back once her connections are gone.
    deadline = time.monotonic() + 10
    while (again := stack.docker("ps", user=ALICE)).returncode != 0:
        assert time.monotonic() < deadline, again.stderr
        time.sleep(0.5)
