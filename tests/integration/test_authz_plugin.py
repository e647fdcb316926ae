"""ds01d as dockerd's AuthZ plugin: what reaches dockerd directly is checked, fail-closed."""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.stack.ds01 import IMAGE, Ds01Stack

pytestmark = pytest.mark.docker

ALLOW = "direct_access: allow\n"
DENY = "direct_access: deny\n"


@pytest.fixture(scope="module")
def stack():
    s = Ds01Stack(Path(tempfile.mkdtemp(prefix="ds01p-", dir="/tmp")), ALLOW, inventory=None)
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def policy(stack):
    yield stack.set_policy
    stack.set_policy(ALLOW)


def raw(
    stack,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict | None = None,
    socket: str | None = None,
) -> tuple[int, dict]:
    """One HTTP request straight to dockerd's socket (as root: direct access), or to ``socket``."""
    args = [
        "curl",
        "-s",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "--unix-socket",
        socket or str(stack.dockerd.socket_path),
        "-X",
        method,
        f"http://docker{path}",
    ]
    for k, v in (headers or {}).items():
        args += ["-H", f"{k}: {v}"]
    if body is not None:
        args += ["--data-binary", "@-"]
    out = subprocess.run(args, input=body, capture_output=True, timeout=60).stdout.decode()
    text, _, code = out.rpartition("\n")
    return int(code), (json.loads(text) if text.strip().startswith("{") else {"raw": text})


def test_direct_access_is_allowed_and_audited(stack):
    """Root on the real socket may act (default policy), and each decision is recorded."""
    # (create only: this sandbox's kernel refuses privileged containers, dockerd does not)
    created = stack.docker("create", "--privileged", IMAGE, "true", direct=True)
    assert created.returncode == 0, created.stderr
    stack.docker("rm", created.stdout.strip(), direct=True)
    events = [e for e in stack.audit_events() if e.get("channel") == "direct"]
    assert any(
        e["endpoint"].startswith("POST /") and "/containers/create" in e["endpoint"] for e in events
    )


def test_direct_access_can_be_denied_by_policy(stack, policy):
    """With `direct_access: deny`, dockerd refuses with ds01's reason."""
    policy(DENY)
    result = stack.docker("ps", direct=True)
    assert result.returncode != 0
    assert "authorization denied by plugin" in result.stderr
    assert "ds01: direct access to dockerd is disabled by the DS01 policy" in result.stderr


def test_forged_gateway_token_is_refused(stack):
    """A request claiming to come from the gateway with a token ds01d never issued is denied."""
    code, body = raw(stack, "GET", "/v1.41/containers/json", headers={"X-Ds01-Token": "forged"})
    assert code == 403
    assert "a gateway token that does not match its request" in body["message"]


def test_large_create_body_does_not_fail_open(stack, policy):
    """dockerd does not show bodies over 1 MiB to plugins; such a create is refused, not waved through."""
    policy("direct_access: allow\n")
    body = {
        "Image": IMAGE,
        "Cmd": ["true"],
        "Labels": {"pad": "x" * (4 * 2**20)},
        "HostConfig": {"Privileged": True},
    }
    data = json.dumps(body).encode()
    # Through the gateway (as a user would): the body is over the gateway's JSON cap.
    code, answer = raw(
        stack,
        "POST",
        "/v1.41/containers/create",
        data,
        {"Content-Type": "application/json"},
        socket=str(stack.gateway_socket),
    )
    assert code == 413, answer
    # Direct with a token-less request, policy denying direct access: denied, not allowed blind.
    policy(DENY)
    code, answer = raw(
        stack, "POST", "/v1.41/containers/create", data, {"Content-Type": "application/json"}
    )
    assert code == 403 and "ds01:" in answer["message"]


def test_new_policy_is_loaded_on_sighup_and_a_bad_one_is_rejected(stack, policy):
    """SIGHUP loads a valid policy; an invalid one is logged and the old one stays."""
    policy(DENY)
    assert stack.docker("ps", direct=True).returncode != 0
    stack.policy_file.write_text("defaults:\n  memory: 32 gigs\n")
    stack.proc.send_signal(signal.SIGHUP)
    time.sleep(0.3)
    assert stack.docker("ps", direct=True).returncode != 0  # the DENY policy is still in force
    assert "policy reload rejected" in stack.log.read_text()
    assert "defaults.memory: '32 gigs' is not a size like 32g" in stack.log.read_text()


def test_dockerd_refuses_everything_while_the_plugin_is_down(stack):
    """Fail closed: with ds01d gone, dockerd answers nothing, not even /_ping."""
    stack.kill_ds01d()
    try:
        result = stack.docker("ps", direct=True)
        assert result.returncode != 0
        assert "plugin" in result.stderr.lower()
    finally:
        stack.start_ds01d()
    assert stack.docker("ps", direct=True).returncode == 0
