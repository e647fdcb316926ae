"""``ds01 doctor``: checks a DS01 deployment and prints each problem with its fix.

Every probe comes in through a parameter (paths, an HTTP getter, NVML), so the checks are
tested against faked hosts; the defaults look at the real one.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from policy.loader import PolicyError, parse_policy

Getter = Callable[
    [str, str], tuple[int, dict[str, str], Any]
]  # (socket, path) -> status, headers, json


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass
class Host:
    """Where to look; every default is the production layout of packaging/install.sh."""

    daemon_json: str = "/etc/docker/daemon.json"
    real_socket: str | None = None  # default: daemon.json "hosts", else /run/ds01/dockerd.sock
    gateway_socket: str = "/var/run/docker.sock"
    plugin_socket: str = "/run/docker/plugins/ds01.sock"
    plugin_spec: str = "/etc/docker/plugins/ds01.spec"
    policy: str = "/etc/ds01/policy.yaml"
    plugin_name: str = "ds01"
    get: Getter = field(default=None)  # type: ignore[assignment]
    nvml: Callable[[], Any] | None = None


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=5)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(self.unix_path)


def http_get(sock: str, path: str) -> tuple[int, dict[str, str], Any]:
    conn = _Unix(sock)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        data = resp.read()
        headers = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
    try:
        return resp.status, headers, json.loads(data) if data.strip() else None
    except ValueError:
        return resp.status, headers, None


def _real_socket(host: Host) -> str:
    if host.real_socket:
        return host.real_socket
    try:
        with open(host.daemon_json) as f:
            hosts = json.load(f).get("hosts", [])
    except (OSError, ValueError):
        hosts = []
    for entry in hosts:
        if entry.startswith("unix://"):
            return entry[len("unix://") :]
    return "/run/ds01/dockerd.sock"


def check_real_socket(host: Host) -> Check:
    path = _real_socket(host)
    try:
        st = os.stat(path)
    except OSError:
        return Check(
            "dockerd socket",
            False,
            f"{path} does not exist",
            "put packaging/daemon.json's keys into /etc/docker/daemon.json and restart docker",
        )
    if not stat.S_ISSOCK(st.st_mode):
        return Check(
            "dockerd socket", False, f"{path} is not a socket", 'check daemon.json "hosts"'
        )
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != 0 or mode & 0o007 or (mode & 0o070 and st.st_gid != 0):
        return Check(
            "dockerd socket",
            False,
            f"{path} is mode {mode:o}, uid {st.st_uid}, gid {st.st_gid}: users can bypass DS01",
            'set "group": "root" in /etc/docker/daemon.json and restart docker',
        )
    return Check("dockerd socket", True, f"{path} is root-only (mode {mode:o})")


def check_gateway(host: Host) -> Check:
    path = host.gateway_socket
    try:
        status, headers, body = host.get(path, "/ds01/v1/whoami")
    except OSError as exc:
        return Check(
            "gateway",
            False,
            f"{path}: {exc.strerror or exc}",
            "start ds01d with --gateway-socket /var/run/docker.sock (systemctl start ds01d)",
        )
    if status == 200 and isinstance(body, dict) and "user" in body:
        return Check("gateway", True, f"{path} is ds01d's gateway (you are {body['user']})")
    server = headers.get("server", "")
    return Check(
        "gateway",
        False,
        f"{path} answers as {server or 'something else'}, not ds01d: "
        "users talk to dockerd directly",
        "mask docker.socket and run ds01d with --gateway-socket",
    )


def _info(host: Host) -> dict[str, Any] | None:
    try:
        status, _, body = host.get(_real_socket(host), "/info")
    except OSError:
        return None
    return body if status == 200 and isinstance(body, dict) else None


def check_plugin(host: Host, info: dict[str, Any] | None) -> Check:
    present = os.path.exists(host.plugin_socket) or os.path.exists(host.plugin_spec)
    if not present:
        return Check(
            "AuthZ plugin",
            False,
            f"neither {host.plugin_socket} nor {host.plugin_spec} exists",
            "start ds01d (it serves the plugin socket)",
        )
    registered = (info or {}).get("Plugins", {}).get("Authorization") or []
    if info is not None and host.plugin_name not in registered:
        return Check(
            "AuthZ plugin",
            False,
            f"dockerd does not use it (authorization plugins: {registered})",
            f'add "authorization-plugins": ["{host.plugin_name}"] to /etc/docker/daemon.json '
            "and restart docker",
        )
    what = f"{host.plugin_name} is dockerd's authorization plugin" if info else "socket present"
    return Check("AuthZ plugin", True, what)


def check_cgroup_driver(
    host: Host, info: dict[str, Any] | None, policy: dict[str, Any] | None
) -> Check:
    if info is None:
        return Check("cgroup driver", False, "dockerd's /info is not readable", "start docker")
    driver = info.get("CgroupDriver", "?")
    wanted = (policy or {}).get("cgroup_driver", "cgroupfs")
    if driver != wanted:
        return Check(
            "cgroup driver",
            False,
            f"dockerd uses {driver}, the policy says {wanted}",
            f"set cgroup_driver: {driver} in the policy, or native.cgroupdriver={wanted} in daemon.json",
        )
    return Check(
        "cgroup driver",
        True,
        f"{driver} (cgroup v{2 if os.path.exists('/sys/fs/cgroup/cgroup.controllers') else 1})",
    )


def check_default_runtime(info: dict[str, Any] | None) -> Check:
    runtime = (info or {}).get("DefaultRuntime", "runc")
    if runtime == "nvidia":
        return Check(
            "default runtime",
            False,
            "the nvidia runtime is dockerd's default: an image's ENV NVIDIA_VISIBLE_DEVICES=all "
            "reaches GPUs outside DS01",
            'remove "default-runtime": "nvidia" from /etc/docker/daemon.json (DS01 uses --gpus)',
        )
    return Check("default runtime", True, runtime)


def check_nvml(host: Host) -> Check:
    try:
        inventory = host.nvml() if host.nvml else _nvml()
    except Exception as exc:  # a probe must never crash the doctor
        return Check(
            "NVML",
            False,
            f"NVML failed: {exc}",
            "install the NVIDIA driver or use --inventory FILE",
        )
    problems = list(getattr(inventory, "problems", []))
    devices = len(getattr(inventory, "devices", []))
    if problems and not devices:
        return Check(
            "NVML",
            False,
            "; ".join(problems),
            "install the NVIDIA driver, or give ds01d --inventory /etc/ds01/inventory.yaml",
        )
    return Check(
        "NVML",
        True,
        f"{devices} allocatable devices" + (f" ({'; '.join(problems)})" if problems else ""),
    )


def _nvml() -> Any:
    from allocator.nvml import nvml_inventory

    return nvml_inventory()


def check_policy(host: Host) -> tuple[Check, dict[str, Any] | None]:
    try:
        with open(host.policy, encoding="utf-8") as f:
            doc = parse_policy(f.read(), host.policy)
    except OSError:
        return Check(
            "policy",
            False,
            f"{host.policy} is missing",
            f"copy config/default-policy.yaml to {host.policy}",
        ), None
    except PolicyError as exc:
        return Check(
            "policy", False, str(exc), f"fix it, then: ds01 policy validate {host.policy}"
        ), None
    return Check("policy", True, f"{host.policy} is valid"), doc.data


def run_checks(host: Host) -> list[Check]:
    if host.get is None:
        host.get = http_get
    policy_check, policy = check_policy(host)
    info = _info(host)
    return [
        check_real_socket(host),
        check_gateway(host),
        check_plugin(host, info),
        check_cgroup_driver(host, info, policy),
        check_default_runtime(info),
        check_nvml(host),
        policy_check,
    ]


def host_from_args(argv: list[str]) -> Host:
    parser = argparse.ArgumentParser(prog="ds01 doctor", description=__doc__)
    parser.add_argument("--gateway-socket", default=Host.gateway_socket)
    parser.add_argument("--docker-host", help="the real dockerd (default: from daemon.json)")
    parser.add_argument("--plugin-socket", default=Host.plugin_socket)
    parser.add_argument("--policy", default=Host.policy)
    parser.add_argument("--plugin-name", default=Host.plugin_name)
    args = parser.parse_args(argv)
    real = args.docker_host.removeprefix("unix://") if args.docker_host else None
    return Host(
        real_socket=real,
        gateway_socket=args.gateway_socket,
        plugin_socket=args.plugin_socket,
        policy=args.policy,
        plugin_name=args.plugin_name,
    )


def doctor(argv: list[str] | None = None, host: Host | None = None) -> int:
    """Print every check; exit 0 when all pass, 1 when any problem was found."""
    checks = run_checks(host or host_from_args(argv or []))
    width = max(len(c.name) for c in checks)
    for check in checks:
        mark = "ok " if check.ok else "!! "
        print(f"{mark}{check.name.ljust(width)}  {check.detail}")
        if not check.ok and check.fix:
            print(f"   {' ' * width}  To fix: {check.fix}")
    problems = sum(not c.ok for c in checks)
    print(
        f"{problems} problem{'s' if problems != 1 else ''} found"
        if problems
        else "all checks passed"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(doctor(sys.argv[1:]))
