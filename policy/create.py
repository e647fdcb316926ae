"""``POST /containers/create``: refuse what the policy forbids, rewrite the rest canonically.

The rewrite pins the container to its owner: owner labels, the owner's cgroup parent, the
owner's per-container limits, and no NVIDIA_* variables of the user's own choosing (devices
come only from the allocator, through :func:`apply_allocation`).
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

from allocator.request import GpuRequestError, parse_gpu_request
from formats.labels import (
    DS01_WRITTEN_LABELS,
    LABEL_ALLOCATED_AT,
    LABEL_DEVICES,
    LABEL_GPUEQ,
    LABEL_GROUP,
    LABEL_PREFIX,
    LABEL_UID,
    LABEL_USER,
    USER_SETTABLE_LABELS,
    format_devices,
    format_gpueq,
    format_time,
)

from .decision import Decision, Denied, allow, deny, not_found
from .identity import Identity
from .images import check_image_use
from .limits import Limits
from .mounts import check_bind_options, container_bind_sources, host_bind_sources, pin_bind
from .networks import (
    check_create_networks,
    endpoint_links,
    link_target,
    pin_endpoint_links,
    pinned_links,
)
from .ports import check_ports
from .resources import apply_resources
from .run_as import checked_group_add, checked_user, runs_as_user, with_no_new_privileges
from .slices import cgroup_parent
from .state import State
from .strict_json import CONTAINER_CREATE

# Host features a user gets only when the policy grants them (`allow:`), with the CLI flag
# the user typed, so the message speaks their language.
_NAMESPACE_FLAGS = {
    "PidMode": "--pid",
    "IpcMode": "--ipc",
    "NetworkMode": "--network",
    "UTSMode": "--uts",
    "UsernsMode": "--userns",
    "CgroupnsMode": "--cgroupns",
}
_SAFE_SECURITY_OPTS = {"no-new-privileges", "no-new-privileges:true", "no-new-privileges=true"}
_SAFE_LOG_DRIVERS = {"", "json-file", "local", "none", "journald"}
_SAFE_RUNTIMES = {"", "runc", "io.containerd.runc.v2"}
_NON_ISOLATING_MODES = {"host"}


def who(limits: Limits) -> str:
    return limits.who()


def refuse(code: str, reason: str, fix: str) -> Denied:
    return Denied(deny(code, reason, fix))


def decide_create(
    body: dict[str, Any], identity: Identity, limits: Limits, state: State
) -> Decision:
    """Approve ``body`` (already strictly parsed against CONTAINER_CREATE) with a rewrite."""
    if not isinstance(body.get("Image"), str) or not body["Image"]:
        raise refuse("bad_body", "the create request names no image", "give an image name")
    host = body.setdefault("HostConfig", {}) or {}
    body["HostConfig"] = host
    changes: list[str] = []
    try:
        gpu_request = parse_gpu_request(host.get("DeviceRequests"))
    except GpuRequestError as exc:
        raise refuse("gpu_request", exc.reason, exc.fix) from None
    if not limits.is_admin:
        _check_host_config(host, identity, limits, state)
        _check_references(body, host, identity, state)
        check_create_networks(body, identity, limits, state)
        image_refusal = check_image_use(body["Image"], identity, limits, state, create=True)
        if image_refusal is not None:
            raise Denied(image_refusal)
        _check_gpu_container(host, gpu_request)
        _check_restart_with_binds(host, state)
        check_ports(host, limits, changes)
        _apply_run_as(body, host, identity, limits, changes)
        apply_resources(host, limits, changes, state.host_cpus)
        if limits.max_containers is not None and state.user_containers >= limits.max_containers:
            raise refuse(
                "max_containers",
                f"you already have {state.user_containers} containers, the limit for "
                f"{who(limits)} is {limits.max_containers}",
                "remove containers you no longer need (docker ps -a; docker rm NAME)",
            )
        parent = cgroup_parent(state.cgroup_driver, identity.user, limits.group)
        if host.get("CgroupParent") != parent:
            host["CgroupParent"] = parent
            changes.append(f"CgroupParent={parent}")
    if host.get("DeviceRequests"):
        changes.append("DeviceRequests replaced by the allocator's devices")
    host["DeviceRequests"] = None
    _pin_owner(body, identity, limits, changes)
    _scrub_env(body, changes)
    return allow(body=body, gpu_request=gpu_request, changes=tuple(changes))


def apply_allocation(
    body: dict[str, Any], devices: list[str], gpueq: float, now: float
) -> dict[str, Any]:
    """Put the allocator's devices into an approved create body (no devices: ``void``)."""
    host = body.setdefault("HostConfig", {})
    env = [e for e in body.get("Env") or [] if not e.startswith("NVIDIA_VISIBLE_DEVICES=")]
    labels = body.setdefault("Labels", {})
    if devices:
        host["DeviceRequests"] = [
            {"Driver": "nvidia", "DeviceIDs": list(devices), "Capabilities": [["gpu"]]}
        ]
        env.append("NVIDIA_VISIBLE_DEVICES=" + ",".join(devices))
        labels[LABEL_DEVICES] = format_devices(devices)
        labels[LABEL_GPUEQ] = format_gpueq(gpueq)
        labels[LABEL_ALLOCATED_AT] = format_time(now)
    else:
        host["DeviceRequests"] = None
        env.append("NVIDIA_VISIBLE_DEVICES=void")
    body["Env"] = env
    return body


def _pin_owner(
    body: dict[str, Any], identity: Identity, limits: Limits, changes: list[str]
) -> None:
    labels = body.get("Labels") or {}
    spoofed = sorted(k for k in labels if _reserved_label(k))
    if spoofed:
        changes.append("removed labels " + ", ".join(spoofed))
    labels = {k: v for k, v in labels.items() if not _reserved_label(k)}
    for key in DS01_WRITTEN_LABELS:  # explicit, so an image's ds01.* labels never show through
        labels.setdefault(key, "")
    labels[LABEL_USER] = identity.user
    labels[LABEL_UID] = "" if identity.uid is None else str(identity.uid)
    labels[LABEL_GROUP] = limits.group
    body["Labels"] = labels


def owned_labels(labels: dict[str, str] | None, user: str) -> dict[str, str]:
    """``labels`` without any DS01-reserved label a user set, plus the true owner."""
    out = {k: v for k, v in (labels or {}).items() if not _reserved_label(k)}
    out[LABEL_USER] = user
    return out


def _reserved_label(key: str) -> bool:
    return key.casefold().startswith(LABEL_PREFIX) and key not in USER_SETTABLE_LABELS


def _scrub_env(body: dict[str, Any], changes: list[str]) -> None:
    env = body.get("Env") or []
    removed = [e.split("=", 1)[0] for e in env if e.upper().startswith("NVIDIA_")]
    if removed:
        changes.append("removed env " + ", ".join(sorted(set(removed))))
    body["Env"] = [e for e in env if not e.upper().startswith("NVIDIA_")]


def _check_host_config(
    host: dict[str, Any], identity: Identity, limits: Limits, state: State
) -> None:
    group = who(limits)
    ask = "ask an admin to grant it in the DS01 policy (allow: [...])"
    if host.get("Privileged") and not limits.allows("privileged"):
        raise refuse(
            "privileged", f"--privileged is not allowed for {group}", "run without --privileged"
        )
    if host.get("CapAdd") and not limits.allows("cap_add"):
        caps = ", ".join(host["CapAdd"])
        raise refuse(
            "cap_add", f"--cap-add {caps} is not allowed for {group}", f"drop --cap-add, or {ask}"
        )
    if host.get("Devices") and not limits.allows("devices"):
        raise refuse(
            "devices",
            f"--device is not allowed for {group}",
            "ask for GPUs with --gpus, not --device",
        )
    if host.get("DeviceCgroupRules") and not limits.allows("device_cgroup_rules"):
        raise refuse(
            "device_cgroup_rules",
            f"--device-cgroup-rule is not allowed for {group}",
            f"drop it, or {ask}",
        )
    unsafe = [o for o in host.get("SecurityOpt") or [] if o not in _SAFE_SECURITY_OPTS]
    if unsafe and not limits.allows("security_opt"):
        raise refuse(
            "security_opt",
            f"--security-opt {unsafe[0]} is not allowed for {group} (only no-new-privileges is)",
            f"drop --security-opt {unsafe[0]}",
        )
    if host.get("Sysctls") and not limits.allows("sysctls"):
        raise refuse("sysctls", f"--sysctl is not allowed for {group}", f"drop --sysctl, or {ask}")
    if host.get("Runtime", "") not in _SAFE_RUNTIMES and not limits.allows("runtime"):
        raise refuse(
            "runtime",
            f"--runtime {host['Runtime']} is not allowed for {group}",
            "drop --runtime; GPUs are given with --gpus",
        )
    if host.get("Isolation", "") not in ("", "default"):
        raise refuse(
            "isolation", f"--isolation {host['Isolation']} is not supported", "drop --isolation"
        )
    if host.get("Cgroup"):
        # container:<id> would put this container in another's cgroup (dockerd 20.10 ignores
        # it; a later one may not): every container runs in its owner's own cgroup.
        raise refuse(
            "cgroup_parent",
            f"HostConfig.Cgroup {host['Cgroup']!r} is chosen by DS01 (your own cgroup)",
            "leave HostConfig.Cgroup empty",
        )
    if host.get("CgroupParent") and host["CgroupParent"] != cgroup_parent(
        state.cgroup_driver, identity.user, limits.group
    ):
        raise refuse(
            "cgroup_parent",
            "--cgroup-parent is chosen by DS01 (your containers run in your own cgroup)",
            "drop --cgroup-parent",
        )
    for key, flag in _NAMESPACE_FLAGS.items():
        mode = host.get(key) or ""
        if mode in _NON_ISOLATING_MODES and not limits.allows("host_namespaces"):
            raise refuse(
                f"{flag[2:]}_host", f"{flag}=host is not allowed for {group}", f"drop {flag}=host"
            )
    if host.get("MaskedPaths") is not None or host.get("ReadonlyPaths") is not None:
        raise refuse(
            "system_paths",
            "changing the masked or read-only /proc paths (--security-opt systempaths=...) is not allowed",
            "drop --security-opt systempaths=unconfined",
        )
    if host.get("Annotations"):
        raise refuse("annotations", "--annotation is not allowed for " + group, "drop --annotation")
    if host.get("OomKillDisable"):
        raise refuse(
            "oom_kill_disable", "--oom-kill-disable is not allowed", "drop --oom-kill-disable"
        )
    if (host.get("OomScoreAdj") or 0) < 0:
        raise refuse(
            "oom_score_adj",
            "a negative --oom-score-adj would make the kernel kill other users' processes first",
            "drop --oom-score-adj or use a value >= 0",
        )
    log_type = (host.get("LogConfig") or {}).get("Type") or ""
    if log_type not in _SAFE_LOG_DRIVERS:
        raise refuse(
            "log_driver", f"--log-driver {log_type} is not allowed", "use the default log driver"
        )
    if (host.get("VolumeDriver") or "") not in ("", "local"):
        raise refuse("volume_driver", "--volume-driver is not allowed", "drop --volume-driver")
    if _host_binds(host, state) and not runs_as_user(identity, limits):
        raise refuse(
            "run_as_root_binds",
            f"containers of {group} run as root (run_as: root), so they may not mount host "
            "folders: root in the container would be root on those files",
            "use a named volume (-v NAME:/path), or ask an admin for run_as: user",
        )
    if host.get("Binds"):
        host["Binds"] = [_pinned_bind(b, identity, limits, state) for b in host["Binds"]]
    for mount in host.get("Mounts") or []:
        _check_mount(mount or {}, identity, limits, state)


def _pinned_bind(bind: str, identity: Identity, limits: Limits, state: State) -> str:
    """A ``Binds`` entry checked, with a host source pinned to its resolved path."""
    source, _, rest = bind.partition(":")
    if source.startswith("/"):
        _, _, options = rest.partition(":")
        check_bind_options(options.split(",") if options else [], limits)
        resolved = pin_bind(source, identity, limits, state)
        return f"{resolved}:{rest}" if rest else resolved
    if rest:
        _check_volume_name(source, identity, state)
    return bind  # a named volume, or an anonymous one ("/data" alone is parsed above)


def _check_mount(mount: dict[str, Any], identity: Identity, limits: Limits, state: State) -> None:
    kind = mount.get("Type") or ""
    source = mount.get("Source") or ""
    if kind == "bind":
        if (mount.get("BindOptions") or {}).get("CreateMountpoint"):
            raise refuse(
                "bind_missing",
                "bind-create-src would let dockerd create the host folder as root",
                f"create it first: mkdir -p {source}",
            )
        mount["Source"] = pin_bind(source, identity, limits, state)
    elif kind == "volume":
        driver = (mount.get("VolumeOptions") or {}).get("DriverConfig") or {}
        _check_volume_driver(driver.get("Name") or "", driver.get("Options") or {})
        if source:
            _check_volume_name(source, identity, state)
    elif kind not in ("tmpfs", "image"):
        raise refuse(
            "mount_type", f"mounts of type {kind!r} are not allowed", "use bind, volume or tmpfs"
        )


def _check_volume_driver(driver: str, options: dict[str, Any]) -> None:
    if driver not in ("", "local"):
        raise refuse(
            "volume_driver", f"volume driver {driver!r} is not allowed", "use the local driver"
        )
    if any(k.casefold() in ("type", "o", "device") for k in options):
        raise refuse(
            "volume_bind_options",
            "local volumes with type/o/device options can mount any host path",
            "use a plain named volume, or bind-mount a folder under your home directory",
        )


def _check_volume_name(name: str, identity: Identity, state: State) -> None:
    # A volume that does not exist yet is created for the user; someone else's is invisible.
    facts = state.related.get(f"volume:{name}")
    if facts is not None and facts.owner != identity.user:
        raise Denied(_missing("volume", name))


def _check_references(
    body: dict[str, Any], host: dict[str, Any], identity: Identity, state: State
) -> None:
    """Other containers the body names (namespaces, VolumesFrom, links) must be the user's;
    each is then named by the full ID that was checked, which dockerd cannot resolve again
    to another container."""
    for settings in _endpoints(body).values():
        endpoint_links(settings)  # raises Denied when malformed
    full: dict[str, str] = {}
    for ref in referenced_containers(body):
        facts = state.related.get(f"container:{ref}")
        if facts is None or facts.owner != identity.user:
            raise Denied(_missing("container", ref))
        full[ref] = facts.id or ref
    if full:
        _pin_references(host, full)
        for settings in _endpoints(body).values():
            if endpoint_links(settings):
                pin_endpoint_links(settings, full)


def _pin_references(host: dict[str, Any], full: dict[str, str]) -> None:
    for key in _NAMESPACE_FLAGS:
        mode = host.get(key) or ""
        if mode.startswith("container:"):
            host[key] = "container:" + full[mode.split(":", 1)[1]]
    if host.get("VolumesFrom"):
        host["VolumesFrom"] = [
            ":".join([full[e.split(":", 1)[0]], *e.split(":", 1)[1:]]) for e in host["VolumesFrom"]
        ]
    if host.get("Links"):
        host["Links"] = pinned_links(host["Links"], full)


def _missing(kind: str, ref: str) -> Decision:
    # "Not found", as dockerd says it, but not HTTP 404: on a create the docker CLI takes a
    # 404 to mean a missing image and would try to pull it.
    return replace(not_found(kind, ref), status=400)


def referenced_containers(body: dict[str, Any]) -> list[str]:
    """Container names/IDs a create body refers to; the I/O layer looks them up."""
    host = body.get("HostConfig") or {}
    refs = []
    for key in _NAMESPACE_FLAGS:
        mode = host.get(key) or ""
        if mode.startswith("container:"):
            refs.append(mode.split(":", 1)[1])
    for entry in host.get("VolumesFrom") or []:
        refs.append(entry.split(":", 1)[0])
    for link in host.get("Links") or []:
        refs.append(link_target(link))
    for settings in _endpoints(body).values():
        with contextlib.suppress(Denied):  # a malformed one is refused by _check_references
            refs.extend(endpoint_links(settings))  # links made on a user-defined network
    return refs


def _endpoints(body: dict[str, Any]) -> dict[str, Any]:
    endpoints = (body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}
    return endpoints if isinstance(endpoints, dict) else {}


def referenced_volumes(body: dict[str, Any]) -> list[str]:
    """Named volumes a create body mounts; the I/O layer looks up their owners."""
    host = body.get("HostConfig") or {}
    names = []
    for bind in host.get("Binds") or []:
        source = bind.split(":", 1)[0]
        if ":" in bind and not source.startswith("/"):
            names.append(source)
    for mount in host.get("Mounts") or []:
        if (mount or {}).get("Type") == "volume" and mount.get("Source"):
            names.append(mount["Source"])
    return names


def _host_binds(host: dict[str, Any], state: State) -> list[str]:
    """The host folders a new container would mount: its own binds and those it inherits
    from the containers in ``--volumes-from``."""
    sources = host_bind_sources(host)
    for entry in host.get("VolumesFrom") or []:
        ref = entry.split(":", 1)[0]
        for facts in state.related.values():  # by the name given, or the full ID pinned since
            if facts.kind == "container" and ref in (facts.id, facts.name):
                sources += container_bind_sources(facts.details)
                break
        else:
            pinned = state.related.get(f"container:{ref}")
            if pinned is not None:
                sources += container_bind_sources(pinned.details)
    return sources


def _check_restart_with_binds(host: dict[str, Any], state: State) -> None:
    # dockerd restarts such a container by itself, never asking DS01, so its bind sources
    # would be resolved again unchecked.
    restart = (host.get("RestartPolicy") or {}).get("Name") or "no"
    if restart not in ("", "no") and _host_binds(host, state):
        raise refuse(
            "restart_with_binds",
            f"--restart {restart} is not allowed on containers that mount host folders: dockerd "
            "would restart it without DS01 re-checking those folders",
            "drop --restart, or use a named volume instead of the host folder",
        )


def _apply_run_as(
    body: dict[str, Any],
    host: dict[str, Any],
    identity: Identity,
    limits: Limits,
    changes: list[str],
) -> None:
    if not runs_as_user(identity, limits):
        return
    requested = body.get("User") or ""
    body["User"] = checked_user(requested, identity, limits, "docker run")
    host["GroupAdd"] = checked_group_add(host.get("GroupAdd"), identity, limits) or None
    host["SecurityOpt"] = with_no_new_privileges(host.get("SecurityOpt"))
    changes.append(f"User={body['User']} (run_as: user), no-new-privileges")


def _check_gpu_container(host: dict[str, Any], gpu_request: Any) -> None:
    restart = (host.get("RestartPolicy") or {}).get("Name") or "no"
    if gpu_request is not None and restart not in ("", "no"):
        raise refuse(
            "gpu_restart_policy",
            f"--restart {restart} is not allowed with GPUs: dockerd would restart the container "
            "without asking DS01 for its GPU",
            "drop --restart (DS01 keeps your GPU for the hold time after a stop)",
        )


SHAPE = CONTAINER_CREATE
