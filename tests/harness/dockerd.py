"""A private, throw-away dockerd for integration tests and demos, plus a docker CLI helper."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from policy.build_cgroup import BUILD_CGROUPFS_PARENT
from tests.harness.host_ledger import claim_path, make_dirs, release

PLUGIN_SPEC_DIR = Path("/etc/docker/plugins")
# Linux sun_path is 108 bytes; stay well below so derived paths also fit.
MAX_SOCKET_PATH = 100


def write_plugin_spec(name: str, socket_path: str | os.PathLike[str]) -> Path:
    """Write /etc/docker/plugins/<name>.spec pointing dockerd at a plugin's unix socket."""
    make_dirs(PLUGIN_SPEC_DIR)
    remove_stale_plugin_specs()
    spec = PLUGIN_SPEC_DIR / f"{name}.spec"
    spec.write_text(f"unix://{os.fspath(socket_path)}\n")
    claim_path(spec)  # removed at the session's end at the latest
    return spec


def remove_stale_plugin_specs() -> None:
    """Remove test plugin specs whose socket is gone (a run that was killed left them).

    dockerd asks every plugin it can discover whether it drives volumes, retrying a dead
    socket for seconds: each stale spec would slow every later volume call of every dockerd.
    """
    for spec in PLUGIN_SPEC_DIR.glob("ds01*.spec"):
        with contextlib.suppress(OSError):
            target = spec.read_text().strip().removeprefix("unix://")
            if not os.path.exists(target):
                spec.unlink()


def remove_plugin_spec(name: str) -> None:
    """Remove the spec file written by write_plugin_spec (no error if absent)."""
    spec = PLUGIN_SPEC_DIR / f"{name}.spec"
    spec.unlink(missing_ok=True)
    release("path", spec)


def docker_binary() -> str:
    """Absolute path of the docker CLI (absolute so runuser's PATH handling cannot matter)."""
    path = shutil.which("docker") or shutil.which("docker", path="/usr/local/bin:/usr/bin")
    if not path:
        raise FileNotFoundError("docker CLI not found; run scripts/setup-host.sh")
    return path


def docker(
    *args: str,
    host: str,
    user: str | None = None,
    input: str | bytes | None = None,
    check: bool = False,
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI against `host` (optionally as `user`); stdout/stderr come back as text."""
    run_env = dict(os.environ)
    run_env.update(
        {
            "DOCKER_HOST": host,
            # Keep CLI 28 quiet and away from any contexts in the caller's config.
            "DOCKER_CLI_HINTS": "false",
            "DOCKER_CONTEXT": "default",
        }
    )
    run_env.pop("DOCKER_TLS_VERIFY", None)
    run_env.pop("DOCKER_CERT_PATH", None)
    if env:
        run_env.update(env)
    cmd = [docker_binary(), *args]
    if user is not None:
        # runuser (non-login) keeps the environment, so DOCKER_HOST survives the switch.
        cmd = ["runuser", "-u", user, "--", *cmd]
    if isinstance(input, bytes):
        raw = subprocess.run(
            cmd, input=input, capture_output=True, env=run_env, timeout=timeout, check=False
        )
        result = subprocess.CompletedProcess(
            raw.args,
            raw.returncode,
            raw.stdout.decode(errors="replace"),
            raw.stderr.decode(errors="replace"),
        )
    else:
        result = subprocess.run(
            cmd,
            input=input,
            capture_output=True,
            text=True,
            env=run_env,
            timeout=timeout,
            check=False,
        )
    if check and result.returncode != 0:
        raise subprocess.CalledProcessError(
            result.returncode, result.args, result.stdout, result.stderr
        )
    return result


def _http_get_unix(path: str, url: str, timeout: float = 5.0) -> tuple[int, str]:
    """Minimal HTTP/1.0 GET over a unix socket; returns (status, body)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(f"GET {url} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    data = b"".join(chunks).decode(errors="replace")
    head, _, body = data.partition("\r\n\r\n")
    status_line = head.split("\r\n", 1)[0]
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError(f"bad HTTP response: {status_line!r}")
    return int(parts[1]), body


class PrivateDockerd:
    """A dockerd with its own data-root, exec-root, socket and pidfile under `base_dir`.

    Usable as a context manager; `stop()` is idempotent and also unmounts leftovers.
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        authz_plugin: str | None = None,
        extra_path: Sequence[str] = (),
        socket_mode: int | None = None,
        env: dict[str, str] | None = None,
        extra_args: Sequence[str] = (),
        shutdown_timeout: int = 3,
        dockerd_binary: str | None = None,
        cgroup_parent: str = BUILD_CGROUPFS_PARENT,
    ) -> None:
        self.base = Path(base_dir).absolute()
        # As packaging/daemon.json sets it: BuildKit's RUN steps go to <parent>/buildkit/<id>.
        self.cgroup_parent = cgroup_parent
        self.authz_plugin = authz_plugin
        self.extra_path = [os.fspath(p) for p in extra_path]
        self.socket_mode = socket_mode
        self.env = dict(env or {})
        self.extra_args = list(extra_args)
        self.shutdown_timeout = shutdown_timeout
        self.dockerd_binary = dockerd_binary
        self.data_root = self.base / "data"
        self.exec_root = self.base / "exec"
        self.pidfile = self.base / "dockerd.pid"
        self.config_file = self.base / "daemon.json"
        self.log_path = self.base / "dockerd.log"
        self._socket_path = self.base / "docker.sock"
        # Own containerd namespace: if a system containerd is running, dockerd 20.10 uses it
        # instead of spawning its own, and daemons sharing "moby" would see each other.
        # containerd names must start and end with a letter or digit (mkdtemp's may end in "_").
        self.containerd_namespace = "ds01-" + re.sub(r"[^A-Za-z0-9]+", "-", self.base.name).strip(
            "-"
        )
        self._proc: subprocess.Popen[bytes] | None = None
        if len(os.fspath(self._socket_path)) >= MAX_SOCKET_PATH:
            raise ValueError(f"base dir too long for a unix socket path: {self._socket_path}")

    @property
    def socket_path(self) -> str:
        """Filesystem path of this daemon's API socket."""
        return os.fspath(self._socket_path)

    @property
    def host(self) -> str:
        """DOCKER_HOST value for this daemon (unix://...)."""
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int | None:
        """dockerd's pid while it runs."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        """The dockerd command line start() uses."""
        binary = self.dockerd_binary or shutil.which("dockerd", path=self._path_env())
        if not binary:
            raise FileNotFoundError("dockerd not found; run scripts/setup-host.sh")
        cmd = [
            binary,
            "--data-root",
            os.fspath(self.data_root),
            "--exec-root",
            os.fspath(self.exec_root),
            "--pidfile",
            os.fspath(self.pidfile),
            "-H",
            self.host,
            "--config-file",
            os.fspath(self.config_file),
            "--bridge=none",
            "--iptables=false",
            "--ip-masq=false",
            "--ip-forward=false",
            "--storage-driver=vfs",
            "--exec-opt",
            "native.cgroupdriver=cgroupfs",
            "--containerd-namespace",
            self.containerd_namespace,
            "--containerd-plugins-namespace",
            f"{self.containerd_namespace}-plugins",
            f"--shutdown-timeout={self.shutdown_timeout}",
            "--cgroup-parent",
            self.cgroup_parent,
        ]
        if self.authz_plugin:
            cmd.append(f"--authorization-plugin={self.authz_plugin}")
        cmd.extend(self.extra_args)
        return cmd

    def _path_env(self) -> str:
        base_path = os.environ.get("PATH") or "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"
        # dockerd needs containerd/runc from sbin dirs even when the caller's PATH lacks them.
        parts = [*self.extra_path, *base_path.split(os.pathsep)]
        for extra in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin"):
            if extra not in parts:
                parts.append(extra)
        return os.pathsep.join(parts)

    def start(self, timeout: float = 30.0, require_ok: bool = True) -> PrivateDockerd:
        """Start dockerd and wait until /_ping answers (200 unless require_ok is False)."""
        if self.running:
            return self
        self.base.mkdir(parents=True, exist_ok=True)
        self.data_root.mkdir(exist_ok=True)
        self.exec_root.mkdir(exist_ok=True)
        # An empty config keeps the host's /etc/docker/daemon.json out of the picture.
        self.config_file.write_text(json.dumps({}))
        self._socket_path.unlink(missing_ok=True)
        env = dict(os.environ)
        env.update(self.env)
        env["PATH"] = self._path_env()
        # Never let a caller's DOCKER_HOST etc. leak into the daemon.
        for key in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "NOTIFY_SOCKET"):
            env.pop(key, None)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.base,
                # Own session: a Ctrl-C in pytest must not kill dockerd before stop() runs.
                start_new_session=True,
            )
        finally:
            log.close()
        try:
            self._wait_ready(timeout, require_ok)
            if self.socket_mode is not None:
                os.chmod(self._socket_path, self.socket_mode)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float, require_ok: bool) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"dockerd exited with {self._proc.returncode} during start\n{self.log_tail()}"
                )
            if self._socket_path.exists():
                try:
                    status, body = _http_get_unix(self.socket_path, "/_ping")
                except OSError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                else:
                    if status == 200 or not require_ok:
                        return
                    last = f"HTTP {status}: {body.strip()[:300]}"
            time.sleep(0.1)
        raise TimeoutError(
            f"dockerd at {self.socket_path} not ready after {timeout:.0f}s ({last})\n"
            f"{self.log_tail()}"
        )

    def log_tail(self, lines: int = 40) -> str:
        """Last lines of dockerd's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no dockerd log)"
        return "\n".join(text.splitlines()[-lines:])

    def ping(self) -> tuple[int, str]:
        """GET /_ping over the socket: (status, body)."""
        return _http_get_unix(self.socket_path, "/_ping")

    def docker(self, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
        """docker(...) bound to this daemon's host."""
        return docker(*args, host=self.host, **kwargs)

    def stop(self, timeout: float = 30.0, kill_containers: bool = True) -> None:
        """SIGTERM dockerd and wait (SIGKILL fallback), then unmount leftovers; idempotent.

        With kill_containers, running containers are SIGKILLed first: on shutdown dockerd
        gives each one its own stop timeout (10 s by default, not --shutdown-timeout), and
        busybox as PID 1 ignores SIGTERM, so one `sleep` container would cost 10 s.
        """
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            if kill_containers:
                self._kill_running_containers()
            self._remove_networks()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
                # dockerd died uncleanly, so its containerd and shims may outlive it.
                self._kill_orphans()
        self._unmount_leftovers()
        self._socket_path.unlink(missing_ok=True)

    def _remove_networks(self, attempts: int = 20) -> None:
        """Remove the networks tests left, through dockerd: each has a bridge on the host
        (br-<id>) that would outlive this dockerd and its data-root, and take an address pool.

        A container just killed may hold its endpoint for a moment: a few tries.
        """
        for attempt in range(attempts):
            listed = self._docker_quiet("network", "ls", "-q", "--filter", "type=custom")
            if listed is None or not listed.split():
                return
            if attempt:  # endpoints a container left behind (a race of connects can)
                for network in listed.split():
                    self._disconnect_all(network)
            self._docker_quiet("network", "rm", *listed.split())
            time.sleep(0.1)

    def _disconnect_all(self, network: str) -> None:
        shown = self._docker_quiet("network", "inspect", network)
        try:
            containers = json.loads(shown or "[]")[0].get("Containers") or {}
        except (ValueError, IndexError, AttributeError):
            return
        for endpoint in containers.values():
            name = endpoint.get("Name") if isinstance(endpoint, dict) else None
            if name:
                self._docker_quiet("network", "disconnect", "-f", network, name)

    def _docker_quiet(self, *args: str) -> str | None:
        """``self.docker``'s output, or None when it failed (cleanup goes on regardless)."""
        try:
            done = self.docker(*args, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    def _kill_running_containers(self) -> None:
        """SIGKILL the init process of each container this daemon reports as running."""
        for config in self.data_root.glob("containers/*/config.v2.json"):
            try:
                state = json.loads(config.read_text()).get("State") or {}
            except (OSError, ValueError):
                continue
            pid = state.get("Pid")
            if not (state.get("Running") and isinstance(pid, int) and pid > 1):
                continue
            # Only a pid whose cgroup names this container: never a recycled stranger's pid.
            try:
                cgroups = Path(f"/proc/{pid}/cgroup").read_text()
            except OSError:
                continue
            if config.parent.name in cgroups:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def _kill_orphans(self) -> None:
        """Kill processes (containerd, shims) whose command line names our exec-root."""
        marker = os.fspath(self.exec_root).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker in cmdline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry.name), signal.SIGKILL)

    def _unmount_leftovers(self) -> None:
        roots = [os.fspath(self.data_root), os.fspath(self.exec_root)]
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
        except OSError:
            return
        targets = []
        for line in mountinfo:
            fields = line.split()
            if len(fields) < 5:
                continue
            # mountinfo escapes spaces etc. as octal.
            point = fields[4].encode().decode("unicode_escape")
            if any(point == r or point.startswith(r + "/") for r in roots):
                targets.append(point)
        # Deepest first so parents are not busy.
        for point in sorted(set(targets), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)

    def cleanup(self) -> None:
        """Stop, then delete the whole base directory."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PrivateDockerd:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"PrivateDockerd(base={os.fspath(self.base)!r}, pid={self.pid})"
