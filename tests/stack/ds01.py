"""A whole DS01 deployment for tests: a private dockerd behind ds01d (plugin + gateway).

Real parts only: a real dockerd with ds01d registered as its AuthZ plugin, the gateway on a
unix socket, real Unix users as clients. The GPU hook is the fake from the harness.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import secrets
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from tests.harness.dockerd import PrivateDockerd, remove_plugin_spec, write_plugin_spec
from tests.harness.fake_nvidia_hook import default_record_path, install_fake_hook
from tests.harness.host_ledger import add_mode_bits, claim_new_cgroups, claim_path, ds01_cgroups
from tests.harness.images import import_busybox_image
from tests.harness.users import ensure_user

REPO = Path(__file__).resolve().parents[2]
IMAGE = "ds01-busybox:latest"


def _wait_for_socket(
    path: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return
        if proc.poll() is not None:
            raise RuntimeError(f"ds01d exited ({proc.returncode}): {log.read_text()[-2000:]}")
        time.sleep(0.05)
    raise RuntimeError(f"ds01d did not create {path}: {log.read_text()[-2000:]}")


def make_reachable_by_test_users(path: Path) -> None:
    """Let other Unix users traverse to the checkout (its venv and code) and run it.

    Only the search (x) bit is added, to directories on the way that lack it: a checkout in a
    private directory would otherwise make every as-a-user test fail on permissions. The host
    ledger puts the original modes back when the last test session ends.
    """
    for directory in [path, *path.parents]:
        add_mode_bits(directory, stat.S_IXOTH)


def user_python() -> str:
    """A Python other Unix users can run, with the project's dependencies: the project venv
    (made from the system Python by scripts/setup-host.sh), else this interpreter."""
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


class Ds01Stack:
    """ds01d + a private dockerd. ``docker(...)`` goes through the gateway as a given user."""

    def __init__(
        self,
        base: Path,
        policy: str,
        inventory: str | None = "config/inventory.example.yaml",
        extra_args: tuple[str, ...] = (),
        nofile: int | None = None,
    ) -> None:
        self.base = base
        claim_path(base)  # removed (with dockerd's data) when the test session ends
        self._cgroups_before: set[Path] | None = None
        # ds01d's open-file limit (soft and hard), e.g. 1024 as systemd gives a unit by default.
        self.nofile = nofile
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)  # test users must reach the gateway socket
        self.policy_file = base / "policy.yaml"
        self.policy_file.write_text(policy)
        self.inventory = str(REPO / inventory) if inventory else "none"
        self.extra_args = extra_args
        self.plugin_name = f"ds01t{secrets.token_hex(3)}"
        self.plugin_socket = base / "plugin.sock"
        self.gateway_socket = base / "gw.sock"
        self.state_dir = base / "state"
        self.log = base / "ds01d.log"
        self.hook_dir = base / "hook"
        self.proc: subprocess.Popen[bytes] | None = None
        self.dockerd = PrivateDockerd(
            base / "d", authz_plugin=self.plugin_name, extra_path=[str(self.hook_dir)]
        )

    @property
    def gateway(self) -> str:
        return f"unix://{self.gateway_socket}"

    @property
    def hook_records(self) -> Path:
        return Path(default_record_path(self.hook_dir))

    def start(self) -> Ds01Stack:
        if self._cgroups_before is None:
            self._cgroups_before = ds01_cgroups()
        make_reachable_by_test_users(REPO)
        install_fake_hook(str(self.hook_dir))
        self.start_ds01d()
        write_plugin_spec(self.plugin_name, str(self.plugin_socket))
        self.dockerd.start()
        import_busybox_image(self.dockerd.host, IMAGE)
        return self

    def start_ds01d(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "ds01d.daemon",
            "--policy",
            str(self.policy_file),
            "--plugin-socket",
            str(self.plugin_socket),
            "--gateway-socket",
            str(self.gateway_socket),
            "--docker-host",
            f"unix://{self.dockerd.socket_path}",
            "--inventory",
            self.inventory,
            "--state-dir",
            str(self.state_dir),
            "--log-level",
            "debug",
            *self.extra_args,
        ]
        nofile = self.nofile

        def limit_files() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                preexec_fn=limit_files if nofile is not None else None,
            )
        for path in (self.plugin_socket, self.gateway_socket):
            _wait_for_socket(path, self.proc, self.log)

    def kill_ds01d(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)
        for path in (self.plugin_socket, self.gateway_socket):
            path.unlink(missing_ok=True)

    def stop(self) -> None:
        try:
            self.dockerd.stop()
        finally:
            self.kill_ds01d(signal.SIGTERM)
            remove_plugin_spec(self.plugin_name)
            if self._cgroups_before is not None:
                # The user cgroups ds01d made: removed when no test session uses them.
                claim_new_cgroups(self._cgroups_before)

    def set_policy(self, text: str) -> None:
        """Replace the policy and make ds01d load it now (SIGHUP), as an admin would."""
        self.policy_file.write_text(text)
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)

    def load_policy(self, text: str, timeout: float = 15.0) -> None:
        """``set_policy``, then wait until ds01d logs that it loaded exactly this text."""
        self.set_policy(text)
        sha = hashlib.sha256(text.encode()).hexdigest()[:12]
        deadline = time.monotonic() + timeout
        while sha not in self.log.read_text(errors="replace"):
            assert time.monotonic() < deadline, "ds01d did not reload the policy"
            time.sleep(0.1)

    def docker(
        self,
        *args: str,
        user: str | None = None,
        input: str | None = None,
        timeout: float = 60,
        direct: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI through the gateway (or ``direct``ly to dockerd, as root)."""
        host = self.dockerd.host if direct else self.gateway
        env = {"DOCKER_HOST": host, "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp"}
        cmd = ["docker", *args]
        if user is not None:
            cmd = ["runuser", "-u", user, "--", "env", *(f"{k}={v}" for k, v in env.items()), *cmd]
        return subprocess.run(
            cmd,
            env={**os.environ, **env},
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def ds01(
        self, *args: str, user: str | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run the ds01 CLI against this stack's gateway, as ``user``."""
        return self.python_module("ds01cli.cli", *args, user=user, timeout=timeout)

    def python(
        self, code: str, user: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run Python ``code`` (with the project's dependencies) as ``user``."""
        return self.python_module("-c", code, user=user, timeout=timeout)

    def python_module(
        self, *args: str, user: str | None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        env = {
            "DOCKER_HOST": self.gateway,
            "PYTHONPATH": str(REPO),
            "NO_COLOR": "1",
            "HOME": "/tmp",
        }
        first = ["-m", args[0], *args[1:]] if args[0] != "-c" else list(args)
        cmd = [user_python(), *first]
        if user is not None:
            cmd = ["runuser", "-u", user, "--", "env", *(f"{k}={v}" for k, v in env.items()), *cmd]
        return subprocess.run(
            cmd,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/tmp",
        )

    def audit_events(self) -> list[dict]:
        path = self.state_dir / "audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def remove_all_containers(self) -> None:
        ids = self.docker("ps", "-aq", direct=True).stdout.split()
        if ids:
            self.docker("rm", "-f", *ids, direct=True)


@contextlib.contextmanager
def small_gpu_stack(policy: str, users: Iterable[str], prefix: str) -> Iterator[Ds01Stack]:
    """A stack on the small GPU inventory (tests/fixtures/inventory-small.yaml: one whole GPU,
    two MIG instances) with ``users`` made first; stopped when the block ends."""
    for name in users:
        ensure_user(name)
    stack = Ds01Stack(
        Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp")),
        policy,
        inventory="tests/fixtures/inventory-small.yaml",
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@contextlib.contextmanager
def without_containers(stack: Ds01Stack) -> Iterator[Ds01Stack]:
    """The stack with no container before and after the block, every GPU free again."""
    stack.remove_all_containers()
    time.sleep(0.5)  # destroy events release the devices
    try:
        yield stack
    finally:
        stack.remove_all_containers()
