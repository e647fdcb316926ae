"""``ds01 doctor``: checks a DS01 deployment and prints each problem with its fix.

Every probe comes in through a parameter (paths, an HTTP requester, NVML), so the checks are
tested against faked hosts; the defaults look at the real one, laid out as
packaging/install.sh leaves it. ds01d's own flags are read from its systemd unit when there is
one, so the checks follow a customised ExecStart.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import json
import os
import shlex
import stat
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ds01d import unix_http
from policy.host_checks import (
    LINK_SYSCTLS,
    Finding,
    bind_grants,
    mount_findings,
    parse_mountinfo,
    policy_findings,
    static_base,
    sysctl_findings,
)
from policy.loader import PolicyError, parse_policy

# (socket path, method, request path) -> (status, lower-cased headers, decoded JSON or None)
Requester = Callable[[str, str, str], tuple[int, dict[str, str], Any]]

DEFAULT_REAL_SOCKET = "/run/ds01/dockerd.sock"
UNIT_FILE = "/etc/systemd/system/ds01d.service"
RUN_AS_ROOT = "run it as root: sudo ds01 doctor"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    warn: bool = False  # with ok False: worth fixing, but a policy choice (exit code stays 0)


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
    cgroup_driver: str | None = None  # ds01d --cgroup-driver; default: the policy's
    inventory: str = "auto"  # ds01d --inventory: auto (NVML), FILE or none
    cgroup_root: str = "/sys/fs/cgroup"
    request: Requester = field(default=None)  # type: ignore[assignment]
    nvml: Callable[[], Any] | None = None  # returns an allocator Inventory
    docker_group: str = "docker"
    mountinfo: str = "/proc/self/mountinfo"
    proc_sys: str = "/proc/sys"
    home_root: str = "/home"  # where {home} lies: the filesystems holding it are checked


# ----------------------------------------------------------------------------- probes


def http_request(sock: str, method: str, path: str) -> tuple[int, dict[str, str], Any]:
    """One HTTP request over a unix socket; OSError when the socket cannot be reached."""
    body = b"{}" if method == "POST" else None
    headers = {"Content-Type": "application/json"} if body else {}
    answer = unix_http.request(sock, method, path, body=body, headers=headers, timeout=5)
    try:
        return answer.status, answer.headers, answer.json()
    except ValueError:
        return answer.status, answer.headers, None


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def real_socket(host: Host) -> str:
    """dockerd's real socket: ``--docker-host``, else daemon.json "hosts", else the default."""
    if host.real_socket:
        return host.real_socket
    try:
        with open(host.daemon_json) as f:
            hosts = json.load(f).get("hosts", [])
    except (OSError, ValueError, AttributeError):
        hosts = []
    for entry in hosts:
        if isinstance(entry, str) and entry.startswith("unix://"):
            return entry[len("unix://") :]
    return DEFAULT_REAL_SOCKET


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


# ----------------------------------------------------------------------------- checks


def check_policy(host: Host) -> tuple[Check, dict[str, Any] | None]:
    try:
        with open(host.policy, encoding="utf-8") as f:
            doc = parse_policy(f.read(), host.policy)
    except FileNotFoundError:
        return Check(
            "policy",
            False,
            f"{host.policy} is missing",
            f"copy config/default-policy.yaml to {host.policy} (packaging/install.sh does)",
        ), None
    except OSError as exc:
        return Check("policy", False, f"{host.policy}: {_why(exc)}", RUN_AS_ROOT), None
    except PolicyError as exc:
        return Check(
            "policy",
            False,
            str(exc),
            f"correct it, then check with: ds01 policy validate {host.policy}",
        ), None
    return Check("policy", True, f"{host.policy} is valid"), doc.data


def check_policy_reload(host: Host) -> list[Check]:
    """A reload ds01d rejected (it then keeps the previous policy), until a valid one loads.

    Asked of the running ds01d through the gateway; where it does not answer, the gateway
    check already says so and nothing is added here.
    """
    try:
        status, _, body = host.request(host.gateway_socket, "GET", "/ds01/v1/policy")
    except OSError:
        return []
    if status != 200 or not isinstance(body, dict) or "sha256" not in body:
        return []
    source, sha = body.get("source", host.policy), str(body["sha256"])[:12]
    rejected = body.get("rejected")
    if not rejected:
        return [Check("policy reload", True, f"ds01d enforces {source} (sha256 {sha})")]
    return [
        Check(
            "policy reload",
            False,
            f"ds01d rejected the last reload of {source} and still enforces the previous "
            f"policy (sha256 {sha}): {rejected.get('error')}",
            f"correct {source} (ds01 policy validate {source} lists every error); ds01d "
            "loads it once it is valid (on change, or: systemctl reload ds01d)",
        )
    ]


def check_real_socket(host: Host) -> Check:
    path = real_socket(host)
    name = "dockerd socket"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Check(
            name,
            False,
            f"{path} does not exist: dockerd is not running behind DS01",
            "merge packaging/daemon.json into /etc/docker/daemon.json (packaging/install.sh "
            "does) and restart docker",
        )
    except OSError as exc:
        return Check(name, False, f"{path}: {_why(exc)}", RUN_AS_ROOT)
    if not stat.S_ISSOCK(st.st_mode):
        return Check(name, False, f"{path} is not a socket", 'check "hosts" in daemon.json')
    mode = stat.S_IMODE(st.st_mode)
    group = _group_name(st.st_gid)
    where = f"{path} is mode {mode:o}, owner {st.st_uid}, group {group}"
    if st.st_uid != 0 or mode & 0o007:
        return Check(
            name,
            False,
            f"{where}: every user can reach dockerd directly and bypass DS01",
            'set "group": "root" in /etc/docker/daemon.json and restart docker',
        )
    if mode & 0o070 and st.st_gid != 0:
        return Check(
            name,
            False,
            f"{where}: members of {group} reach dockerd directly and bypass DS01",
            'set "group": "root" in /etc/docker/daemon.json and restart docker (membership of '
            f"{host.docker_group} is harmless once the real socket is root-only)",
        )
    return Check(name, True, f"{path} is root-only (mode {mode:o}, root:{group})")


def check_gateway(host: Host) -> Check:
    path = host.gateway_socket
    name = "gateway"
    try:
        status, headers, body = host.request(path, "GET", "/ds01/v1/whoami")
    except OSError as exc:
        return Check(
            name,
            False,
            f"{path}: {_why(exc)}: nothing serves the Docker API there",
            "start ds01d (systemctl start ds01d; journalctl -u ds01d says why it stopped)",
        )
    if status == 200 and isinstance(body, dict) and "user" in body:
        return Check(name, True, f"{path} is ds01d's gateway (it sees you as {body['user']})")
    server = headers.get("server", "")
    if server.startswith("Docker/"):
        return Check(
            name,
            False,
            f"{path} is dockerd itself ({server}), not ds01d: users reach dockerd unchecked",
            "keep docker.socket off /var/run/docker.sock (packaging/docker.socket.d/ds01.conf), "
            'remove it from "hosts" in daemon.json, restart docker, then start ds01d',
        )
    return Check(
        name,
        False,
        f"{path} answers /ds01/v1/whoami with {status} ({server or 'unknown server'}), "
        "not as ds01d's gateway",
        "run ds01d with --gateway-socket /var/run/docker.sock",
    )


def read_info(host: Host) -> tuple[dict[str, Any] | None, Check]:
    """dockerd's /info, through the real socket (root), else through the gateway."""
    name = "dockerd"
    path = real_socket(host)
    problems = []
    for sock, how in ((path, "its own socket"), (host.gateway_socket, "the gateway")):
        try:
            status, _, body = host.request(sock, "GET", "/info")
        except OSError as exc:
            problems.append(f"{sock}: {_why(exc)}")
            continue
        if status == 200 and isinstance(body, dict):
            version = body.get("ServerVersion", "?")
            return body, Check(name, True, f"Docker {version} answers on {how}")
        message = body.get("message") if isinstance(body, dict) else None
        problems.append(f"{sock}: {status} {message or ''}".strip())
    denied = any("ermission denied" in p for p in problems)
    return None, Check(
        name,
        False,
        "dockerd's /info is unreadable: " + "; ".join(problems),
        RUN_AS_ROOT if denied and os.geteuid() != 0 else "start docker (systemctl start docker)",
    )


def _not_checked(name: str) -> Check:
    return Check(
        name, False, "not checked: dockerd's /info is unreadable", "see the dockerd line above"
    )


def check_plugin(host: Host, info: dict[str, Any] | None) -> Check:
    name = "AuthZ plugin"
    if not os.path.exists(host.plugin_socket):
        spec = " (its spec file is there)" if os.path.exists(host.plugin_spec) else ""
        return Check(
            name,
            False,
            f"{host.plugin_socket} does not exist{spec}: ds01d is not running, and dockerd "
            "refuses every request without its AuthZ plugin",
            "start ds01d (systemctl start ds01d; journalctl -u ds01d says why it stopped)",
        )
    try:
        status, _, body = host.request(host.plugin_socket, "POST", "/Plugin.Activate")
    except OSError as exc:
        if isinstance(exc, PermissionError):
            return Check(name, False, f"{host.plugin_socket}: {_why(exc)}", RUN_AS_ROOT)
        return Check(
            name,
            False,
            f"{host.plugin_socket}: {_why(exc)}: ds01d does not answer",
            "restart ds01d (systemctl restart ds01d)",
        )
    if status != 200 or "authz" not in (body or {}).get("Implements", []):
        return Check(
            name,
            False,
            f"{host.plugin_socket} is not an AuthZ plugin (Plugin.Activate: {status} {body})",
            f"run ds01d with --plugin-socket {host.plugin_socket}",
        )
    if info is None:
        return Check(
            name,
            False,
            "ds01d answers, but whether dockerd uses it is unknown: /info is unreadable",
            "see the dockerd line above",
        )
    registered = (info.get("Plugins") or {}).get("Authorization") or []
    if host.plugin_name not in registered:
        return Check(
            name,
            False,
            f"ds01d answers, but dockerd does not ask it (authorization plugins: "
            f"{', '.join(registered) or 'none'})",
            f'add "authorization-plugins": ["{host.plugin_name}"] to /etc/docker/daemon.json '
            "and restart docker",
        )
    return Check(name, True, f"dockerd asks {host.plugin_name} ({host.plugin_socket})")


def check_cgroup_driver(
    host: Host, info: dict[str, Any] | None, policy: dict[str, Any] | None
) -> Check:
    name = "cgroup driver"
    if info is None:
        return _not_checked(name)
    driver = info.get("CgroupDriver", "?")
    if host.cgroup_driver:
        wanted, source = host.cgroup_driver, "ds01d --cgroup-driver"
    else:
        wanted, source = (policy or {}).get("cgroup_driver", "cgroupfs"), "the policy"
    version = 2 if os.path.exists(os.path.join(host.cgroup_root, "cgroup.controllers")) else 1
    if driver != wanted:
        return Check(
            name,
            False,
            f"dockerd uses {driver}, {source} says {wanted}: users' containers would not land "
            "in their parent cgroups",
            f"set `cgroup_driver: {driver}` in {host.policy} (and drop --cgroup-driver), or "
            f'"exec-opts": ["native.cgroupdriver={wanted}"] in /etc/docker/daemon.json',
        )
    return Check(name, True, f"{driver} for dockerd and DS01 (cgroup v{version})")


def check_default_runtime(info: dict[str, Any] | None) -> Check:
    name = "default runtime"
    if info is None:
        return _not_checked(name)
    runtime = info.get("DefaultRuntime") or "runc"
    if runtime == "nvidia":
        return Check(
            name,
            False,
            "the nvidia runtime is dockerd's default: an image's ENV NVIDIA_VISIBLE_DEVICES=all "
            "reaches GPUs outside DS01",
            'remove "default-runtime": "nvidia" from /etc/docker/daemon.json and restart docker '
            "(DS01 gives GPUs with --gpus; the toolkit's hook stays)",
        )
    return Check(name, True, runtime)


def check_gpus(host: Host) -> Check:
    name = "GPU inventory"
    if host.inventory == "none":
        return Check(name, True, "none (ds01d --inventory none: GPU requests are refused)")
    try:
        if host.inventory == "auto":
            name = "NVML"
            inventory = host.nvml() if host.nvml else _nvml()
        else:
            from allocator.inventory import load_inventory_file

            inventory = load_inventory_file(host.inventory)
    except Exception as exc:  # a probe must never crash the doctor
        return Check(name, False, f"{exc}", "fix the inventory, or give ds01d --inventory FILE")
    problems = list(getattr(inventory, "problems", ()))
    devices = len(getattr(inventory, "devices", ()))
    if problems and not devices:
        return Check(
            name,
            False,
            "; ".join(problems),
            "install the NVIDIA driver, or describe the GPUs in a file and give ds01d "
            "--inventory FILE (config/inventory.example.yaml)",
        )
    where = "from NVML" if host.inventory == "auto" else f"in {host.inventory}"
    detail = f"{devices} allocatable device{'s' if devices != 1 else ''} {where}"
    return Check(name, True, detail + (f" ({'; '.join(problems)})" if problems else ""))


def _nvml() -> Any:
    try:
        from ds01d.host.nvml import nvml_inventory
    except ImportError as exc:
        raise RuntimeError(f"the NVML backend is not installed ({exc})") from exc
    return nvml_inventory()


# ----------------------------------------------------------------------------- host hardening
# DS01 runs non-admin containers as the caller, so container root cannot leave setuid files or
# device nodes in bind-mounted folders; these checks are the defence in depth around that rule.


def _policy_not_checked(name: str) -> list[Check]:
    return [Check(name, False, "not checked: the policy is unusable", "see the policy line")]


def check_bind_prefixes(policy: dict[str, Any] | None) -> list[Check]:
    """Bind prefixes that are not per-user, and run_as: root next to bind_mounts (warnings)."""
    name = "bind prefixes"
    if policy is None:
        return _policy_not_checked(name)
    findings = policy_findings(policy)
    if not findings:
        return [Check(name, True, "every bind prefix is per-user")]
    return [Check(name, False, f"{f.key}: {f.problem}", f.fix, warn=True) for f in findings]


def _as_checks(name: str, findings: list[Finding]) -> list[Check]:
    return [Check(name, False, f.problem, f.fix) for f in findings]


def check_bind_mount_options(host: Host, policy: dict[str, Any] | None) -> list[Check]:
    """The host mounts holding bind prefixes' folders are nosuid,nodev."""
    name = "bind mount options"
    if policy is None:
        return _policy_not_checked(name)
    try:
        with open(host.mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            mounts = parse_mountinfo(f.read())
    except OSError as exc:
        return [Check(name, False, f"{host.mountinfo}: {_why(exc)}", "run on the host")]
    findings = mount_findings(policy, mounts, host.home_root)
    if findings:
        return _as_checks(name, findings)
    bases = sorted({static_base(g.prefix, host.home_root) for g in bind_grants(policy)})
    if not bases:
        return [Check(name, True, "no bind prefixes for non-admins")]
    return [Check(name, True, f"nosuid,nodev on every mount holding {', '.join(bases)}")]


def check_link_protection(host: Host) -> list[Check]:
    """fs.protected_hardlinks and fs.protected_symlinks are on."""
    values: dict[str, str | None] = {}
    for key in LINK_SYSCTLS:
        try:
            with open(os.path.join(host.proc_sys, *key.split(".")), encoding="ascii") as f:
                values[key] = f.read()
        except OSError:
            values[key] = None
    findings = sysctl_findings(values)
    if findings:
        return _as_checks("link protection", findings)
    return [Check("link protection", True, " and ".join(f"{k} = 1" for k in LINK_SYSCTLS))]


def run_checks(host: Host) -> list[Check]:
    if host.request is None:
        host.request = http_request
    policy_check, policy = check_policy(host)
    info, dockerd_check = read_info(host)
    return [
        check_real_socket(host),
        check_gateway(host),
        dockerd_check,
        check_plugin(host, info),
        check_cgroup_driver(host, info, policy),
        check_default_runtime(info),
        check_gpus(host),
        policy_check,
        *check_policy_reload(host),
        *check_bind_prefixes(policy),
        *check_bind_mount_options(host, policy),
        *check_link_protection(host),
    ]


# ----------------------------------------------------------------------------- command line


def unit_flags(path: str = UNIT_FILE) -> dict[str, str]:
    """ds01d's ``--flag value`` pairs from the ExecStart= of its systemd unit ({} if none)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().replace("\\\n", " ").splitlines()
    except OSError:
        return {}
    for line in lines:
        if line.startswith("ExecStart=") and line[len("ExecStart=") :].strip():
            try:
                words = shlex.split(line[len("ExecStart=") :])
            except ValueError:
                return {}
            flags = {}
            for word, value in zip(words, [*words[1:], ""], strict=True):
                if word.startswith("--") and "=" in word:
                    key, _, val = word.partition("=")
                    flags[key] = val
                elif word.startswith("--") and value and not value.startswith("--"):
                    flags[word] = value
            return flags
    return {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ds01 doctor",
        description="Check this server's DS01 deployment; print each problem with its fix. "
        f"Defaults come from ds01d's unit ({UNIT_FILE}) when it exists.",
        epilog="examples:\n  sudo ds01 doctor         # check everything\n"
        "  sudo ds01 doctor --json  # one JSON object per check",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--unit", default=UNIT_FILE, help="ds01d's systemd unit to read flags from")
    parser.add_argument("--gateway-socket", help="default: /var/run/docker.sock")
    parser.add_argument("--docker-host", help="the real dockerd (default: from daemon.json)")
    parser.add_argument("--plugin-socket", help="default: /run/docker/plugins/ds01.sock")
    parser.add_argument("--policy", help="default: /etc/ds01/policy.yaml")
    parser.add_argument("--inventory", help="auto (NVML), FILE or none; default auto")
    parser.add_argument("--cgroup-driver", choices=["cgroupfs", "systemd"])
    parser.add_argument("--daemon-json", default=Host.daemon_json)
    parser.add_argument("--plugin-name", default=Host.plugin_name)
    parser.add_argument("--home-root", default=Host.home_root, help="where {home} lies")
    parser.add_argument("--mountinfo", default=Host.mountinfo, help="the host's mount table")
    parser.add_argument("--proc-sys", default=Host.proc_sys, help="where fs.* sysctls are read")
    parser.add_argument("--json", action="store_true", help="one JSON object per check")
    return parser


def host_from_args(args: argparse.Namespace) -> Host:
    unit = unit_flags(args.unit)

    def given(flag: str) -> str | None:
        """The flag's value on the command line, else in ds01d's unit file."""
        return getattr(args, flag.lstrip("-").replace("-", "_")) or unit.get(flag)

    def pick(flag: str, default: str) -> str:
        return given(flag) or default

    real = given("--docker-host")
    return Host(
        daemon_json=args.daemon_json,
        real_socket=real.removeprefix("unix://") if real else None,
        gateway_socket=pick("--gateway-socket", Host.gateway_socket),
        plugin_socket=pick("--plugin-socket", Host.plugin_socket),
        policy=pick("--policy", Host.policy),
        plugin_name=args.plugin_name,
        cgroup_driver=given("--cgroup-driver"),
        inventory=pick("--inventory", Host.inventory),
        mountinfo=args.mountinfo,
        proc_sys=args.proc_sys,
        home_root=args.home_root,
    )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def render(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for check in checks:
        label = "ok  " if check.ok else "warn" if check.warn else "FAIL"
        lines.append(f"{label}  {check.name.ljust(width)}  {check.detail}")
        if not check.ok and check.fix:
            lines.append(f"      {' ' * width}  To fix: {check.fix}")
    problems = sum(not c.ok and not c.warn for c in checks)
    warnings = sum(not c.ok and c.warn for c in checks)
    found = [_plural(problems, "problem")] if problems else []
    found += [_plural(warnings, "warning")] if warnings else []
    lines.append(f"{' and '.join(found)} found" if found else "all checks passed")
    return "\n".join(lines)


def doctor(argv: list[str] | None = None, host: Host | None = None) -> int:
    """Print every check; exit 0 when all pass (warnings allowed), 1 on any problem, 2 on misuse."""
    try:
        args = build_parser().parse_args(argv or [])
    except SystemExit as exc:
        return 0 if exc.code in (0, None) else 2
    checks = run_checks(host or host_from_args(args))
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        print(render(checks))
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.flush()
    return 1 if any(not c.ok and not c.warn for c in checks) else 0


if __name__ == "__main__":
    sys.exit(doctor(sys.argv[1:]))
