"""A TLS client-certificate user reaching dockerd over TCP gets their own policy via the plugin.

dockerd listens on tcp://127.0.0.1:<port> with --tlsverify and certificates made here with
openssl (a CA, the server, clients whose CN is a user name). The AuthZ plugin sees ``User`` =
that CN: the user's policy applies, and what the gateway would have to rewrite is refused with
a pointer to the gateway.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.dockerd import docker
from tests.harness.host_ledger import temp_dir
from tests.harness.users import ensure_user
from tests.stack.ds01 import IMAGE, Ds01Stack

pytestmark = pytest.mark.docker

TLS_USER = "ds01-tls-tina"
POLICY = f"""
unknown_users: deny
direct_access: allow
groups:
  students:
    members: [{TLS_USER}]
  admins:
    admin: true
    members: [root]
"""
GATEWAY_FIX = "To fix: use the DS01 gateway socket (unix:///var/run/docker.sock) on the server"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _signed(cwd: Path, name: str, subject: str, extensions: str) -> None:
    """``name``-key.pem and ``name``-cert.pem, signed by the CA in ``cwd``."""
    _openssl("genrsa", "-out", f"{name}-key.pem", "2048", cwd=cwd)
    _openssl(
        "req", "-new", "-key", f"{name}-key.pem", "-subj", subject, "-out", f"{name}.csr", cwd=cwd
    )
    (cwd / f"{name}.ext").write_text(extensions)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
        "-CAcreateserial", "-days", "2", "-out", f"{name}-cert.pem",
        "-extfile", f"{name}.ext",
        cwd=cwd,
    )  # fmt: skip


def make_certificates(cwd: Path, clients: tuple[str, ...]) -> None:
    _openssl("genrsa", "-out", "ca-key.pem", "2048", cwd=cwd)
    _openssl(
        "req", "-new", "-x509", "-days", "2", "-key", "ca-key.pem", "-subj", "/CN=ds01 test CA",
        "-out", "ca.pem",
        cwd=cwd,
    )  # fmt: skip
    _signed(
        cwd,
        "server",
        "/CN=localhost",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    for name in clients:
        _signed(cwd, name, f"/CN={name}", "extendedKeyUsage=clientAuth\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def tls_stack() -> Iterator[tuple[Ds01Stack, str, Path]]:
    ensure_user(TLS_USER)
    base = temp_dir("ds01tls-")
    certs = base / "certs"
    certs.mkdir()
    make_certificates(certs, (TLS_USER, "no-such-user-ds01"))
    port = _free_port()
    stack = Ds01Stack(base, POLICY, inventory=None)
    stack.dockerd.extra_args += [
        "-H", f"tcp://127.0.0.1:{port}", "--tlsverify",
        "--tlscacert", str(certs / "ca.pem"),
        "--tlscert", str(certs / "server-cert.pem"),
        "--tlskey", str(certs / "server-key.pem"),
    ]  # fmt: skip
    stack.start()
    try:
        yield stack, f"tcp://127.0.0.1:{port}", certs
    finally:
        stack.stop()
        shutil.rmtree(base, ignore_errors=True)


def as_cert(tls_stack, cn: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The docker CLI over TCP with the client certificate whose CN is ``cn``."""
    _, host, certs = tls_stack
    flags = [
        "--tlsverify",
        f"--tlscacert={certs / 'ca.pem'}",
        f"--tlscert={certs / f'{cn}-cert.pem'}",
        f"--tlskey={certs / f'{cn}-key.pem'}",
    ]
    return docker(*flags, *args, host=host, timeout=60)


def test_tls_user_gets_their_own_policy(tls_stack):
    stack = tls_stack[0]
    # Tina made a container through the gateway (owned by her); root made another directly.
    mine = stack.docker("create", "--name", "tina-box", IMAGE, "sleep", "300", user=TLS_USER)
    assert mine.returncode == 0, mine.stderr
    theirs = stack.docker("create", "--name", "root-box", IMAGE, "true", direct=True)
    assert theirs.returncode == 0, theirs.stderr

    assert as_cert(tls_stack, TLS_USER, "version").returncode == 0
    full_id = mine.stdout.strip()
    for action in ("start", "stop"):  # her own container, named by its full ID: no rewrite
        done = as_cert(tls_stack, TLS_USER, action, full_id)
        assert done.returncode == 0, done.stderr
    seen = as_cert(tls_stack, TLS_USER, "inspect", "-f", "{{.Name}}", full_id)
    assert (seen.returncode, seen.stdout.strip()) == (0, "/tina-box")
    # By name dockerd would resolve the reference again after DS01's check (a rename loop could
    # point it at another container), and the plugin cannot forward the full ID: refused.
    by_name = as_cert(tls_stack, TLS_USER, "start", "tina-box")
    assert by_name.returncode != 0
    assert "must be adjusted by DS01" in by_name.stderr and "gateway" in by_name.stderr

    for action in ("start", "rm"):  # someone else's container looks missing
        refused = as_cert(tls_stack, TLS_USER, action, "root-box")
        assert refused.returncode != 0 and "No such container: root-box" in refused.stderr

    privileged = as_cert(tls_stack, TLS_USER, "run", "--privileged", IMAGE, "true")
    assert privileged.returncode != 0
    assert (
        "ds01: --privileged is not allowed for group students. To fix: run without --privileged"
        in privileged.stderr
    )
    created = as_cert(tls_stack, TLS_USER, "create", IMAGE, "true")
    assert created.returncode != 0
    assert (
        "ds01: POST /containers/create must be adjusted by DS01 for your account, which a TLS "
        f"connection to dockerd does not allow. {GATEWAY_FIX}" in created.stderr
    )
    listed = as_cert(tls_stack, TLS_USER, "ps", "-a")  # needs the owner filter
    assert listed.returncode != 0
    assert "ds01: GET /containers/json must be adjusted by DS01" in listed.stderr

    # Root on dockerd's unix socket is still direct access, allowed by this policy.
    assert stack.docker("ps", "-a", direct=True).returncode == 0


def test_a_certificate_naming_no_user_is_refused(tls_stack):
    refused = as_cert(tls_stack, "no-such-user-ds01", "version")
    assert refused.returncode != 0
    assert (
        "ds01: the TLS client certificate names 'no-such-user-ds01', who is no user of this "
        "host. To fix: ask an admin for a certificate whose CN is your user name" in refused.stderr
    )
