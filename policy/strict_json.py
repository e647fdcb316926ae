"""Strict JSON for Docker API bodies: parse the way dockerd would, refuse what it would read
differently from us.

Go's encoding/json matches struct fields case-insensitively (with Unicode folding: the
Kelvin sign matches "k") and keeps the last of duplicate keys. A checker that reads the first
``Privileged`` while dockerd reads a later ``privileged`` is bypassed, so: duplicate keys are
refused everywhere, and in struct objects every key must be spelled exactly as Docker's API
names it. Unknown struct keys are refused too, so nothing reaches dockerd that the policy did
not see (for example the legacy top-level HostConfig fields dockerd 20.10 still honours).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


class BodyError(ValueError):
    """The body is not something DS01 will interpret; ``str()`` says why, for the user."""


def _reject_constant(name: str) -> Any:
    raise BodyError(f"{name} is not valid JSON")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise BodyError(f"duplicate key {key!r} in the JSON body")
        out[key] = value
    return out


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # Go refuses numbers out of float64's range
        raise BodyError(f"the number {text[:40]} is out of range")
    return value


def loads_strict(raw: bytes | str) -> Any:
    """Parse JSON refusing duplicate keys, NaN/Infinity, huge numbers, invalid UTF-8, lone
    surrogates and trailing data."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise BodyError("the JSON body is not valid UTF-8") from None
    if text.startswith("\ufeff"):
        raise BodyError("the JSON body starts with a byte-order mark")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_pairs,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
        dumps_canonical(value)  # a lone surrogate (\ud800) parses but cannot be forwarded
        return value
    except BodyError:
        raise
    except UnicodeEncodeError:
        raise BodyError("the JSON body has an unpaired UTF-16 surrogate escape") from None
    except (ValueError, RecursionError) as exc:
        raise BodyError(f"the JSON body does not parse ({exc})") from None


def dumps_canonical(value: Any) -> bytes:
    """The one serialisation DS01 forwards: compact, UTF-8, keys as approved."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


# ---- Shapes of Docker API bodies -------------------------------------------------------

ANY = "any"  # any JSON value (duplicate keys still refused)
MAP = "map"  # an object with free keys (labels, env maps): exact duplicates refused only
BOOL, INT, NUM, STR = "bool", "int", "number", "string"
STRS = "strings"  # a list of strings


@dataclass(frozen=True)
class ListOf:
    item: Any


Shape = Any  # a str kind, a ListOf, or a dict of field name -> Shape (a struct)

_MOUNT = {
    "Type": STR,
    "Source": STR,
    "Target": STR,
    "ReadOnly": BOOL,
    "Consistency": STR,
    "BindOptions": {
        "Propagation": STR,
        "NonRecursive": BOOL,
        "CreateMountpoint": BOOL,
        "ReadOnlyNonRecursive": BOOL,
        "ReadOnlyForceRecursive": BOOL,
    },
    "VolumeOptions": {
        "NoCopy": BOOL,
        "Labels": MAP,
        "Subpath": STR,
        "DriverConfig": {"Name": STR, "Options": MAP},
    },
    "TmpfsOptions": {"SizeBytes": INT, "Mode": INT, "Options": ANY},
    "ImageOptions": {"Subpath": STR},
    "ClusterOptions": ANY,
}
_DEVICE_REQUEST = {
    "Driver": STR,
    "Count": INT,
    "DeviceIDs": STRS,
    "Capabilities": ListOf(STRS),
    "Options": MAP,
}
_WEIGHT_DEVICE = ListOf(ANY)

RESOURCES: dict[str, Shape] = {
    "CpuShares": INT,
    "Memory": INT,
    "NanoCpus": INT,
    "CgroupParent": STR,
    "BlkioWeight": INT,
    "BlkioWeightDevice": _WEIGHT_DEVICE,
    "BlkioDeviceReadBps": _WEIGHT_DEVICE,
    "BlkioDeviceWriteBps": _WEIGHT_DEVICE,
    "BlkioDeviceReadIOps": _WEIGHT_DEVICE,
    "BlkioDeviceWriteIOps": _WEIGHT_DEVICE,
    "CpuPeriod": INT,
    "CpuQuota": INT,
    "CpuRealtimePeriod": INT,
    "CpuRealtimeRuntime": INT,
    "CpusetCpus": STR,
    "CpusetMems": STR,
    "Devices": ListOf(ANY),
    "DeviceCgroupRules": STRS,
    "DeviceRequests": ListOf(_DEVICE_REQUEST),
    "KernelMemory": INT,
    "KernelMemoryTCP": INT,
    "MemoryReservation": INT,
    "MemorySwap": INT,
    "MemorySwappiness": INT,
    "OomKillDisable": BOOL,
    "PidsLimit": INT,
    "Ulimits": ListOf(ANY),
    "CpuCount": INT,
    "CpuPercent": INT,
    "IOMaximumIOps": INT,
    "IOMaximumBandwidth": INT,
}

HOST_CONFIG: dict[str, Shape] = {
    **RESOURCES,
    "Binds": STRS,
    "ContainerIDFile": STR,
    "LogConfig": {"Type": STR, "Config": MAP},
    "NetworkMode": STR,
    "PortBindings": MAP,
    "RestartPolicy": {"Name": STR, "MaximumRetryCount": INT},
    "AutoRemove": BOOL,
    "VolumeDriver": STR,
    "VolumesFrom": STRS,
    "ConsoleSize": ListOf(INT),
    "Annotations": MAP,
    "CapAdd": STRS,
    "CapDrop": STRS,
    "CgroupnsMode": STR,
    "Dns": STRS,
    "DnsOptions": STRS,
    "DnsSearch": STRS,
    "ExtraHosts": STRS,
    "GroupAdd": STRS,
    "IpcMode": STR,
    "Cgroup": STR,
    "Links": STRS,
    "OomScoreAdj": INT,
    "PidMode": STR,
    "Privileged": BOOL,
    "PublishAllPorts": BOOL,
    "ReadonlyRootfs": BOOL,
    "SecurityOpt": STRS,
    "StorageOpt": MAP,
    "Tmpfs": MAP,
    "UTSMode": STR,
    "UsernsMode": STR,
    "ShmSize": INT,
    "Sysctls": MAP,
    "Runtime": STR,
    "Isolation": STR,
    "Mounts": ListOf(_MOUNT),
    "MaskedPaths": STRS,
    "ReadonlyPaths": STRS,
    "Init": BOOL,
}

CONTAINER_CREATE: dict[str, Shape] = {
    "Hostname": STR,
    "Domainname": STR,
    "User": STR,
    "AttachStdin": BOOL,
    "AttachStdout": BOOL,
    "AttachStderr": BOOL,
    "ExposedPorts": MAP,
    "Tty": BOOL,
    "OpenStdin": BOOL,
    "StdinOnce": BOOL,
    "Env": STRS,
    "Cmd": ANY,
    "Healthcheck": ANY,
    "ArgsEscaped": BOOL,
    "Image": STR,
    "Volumes": MAP,
    "WorkingDir": STR,
    "Entrypoint": ANY,
    "NetworkDisabled": BOOL,
    "MacAddress": STR,
    "OnBuild": STRS,
    "Labels": MAP,
    "StopSignal": STR,
    "StopTimeout": INT,
    "Shell": STRS,
    "HostConfig": HOST_CONFIG,
    "NetworkingConfig": {"EndpointsConfig": MAP},
}

CONTAINER_UPDATE: dict[str, Shape] = {
    **RESOURCES,
    "RestartPolicy": {"Name": STR, "MaximumRetryCount": INT},
}

EXEC_CREATE: dict[str, Shape] = {
    "AttachStdin": BOOL,
    "AttachStdout": BOOL,
    "AttachStderr": BOOL,
    "ConsoleSize": ListOf(INT),
    "Detach": BOOL,
    "DetachKeys": STR,
    "Tty": BOOL,
    "Env": STRS,
    "Cmd": ANY,
    "Privileged": BOOL,
    "User": STR,
    "WorkingDir": STR,
}

EXEC_START: dict[str, Shape] = {"Detach": BOOL, "Tty": BOOL, "ConsoleSize": ListOf(INT)}

VOLUME_CREATE: dict[str, Shape] = {
    "Name": STR,
    "Driver": STR,
    "DriverOpts": MAP,
    "Labels": MAP,
    "ClusterVolumeSpec": ANY,
}

NETWORK_CREATE: dict[str, Shape] = {
    "Name": STR,
    "CheckDuplicate": BOOL,
    "Driver": STR,
    "Scope": STR,
    "EnableIPv6": BOOL,
    "EnableIPv4": BOOL,
    "IPAM": ANY,
    "Internal": BOOL,
    "Attachable": BOOL,
    "Ingress": BOOL,
    "ConfigOnly": BOOL,
    "ConfigFrom": ANY,
    "Options": MAP,
    "Labels": MAP,
}

NETWORK_CONNECT: dict[str, Shape] = {"Container": STR, "EndpointConfig": ANY, "Force": BOOL}


def check_shape(value: Any, shape: Shape, where: str = "") -> None:
    """Raise BodyError if ``value`` does not have ``shape``; ``null`` is accepted anywhere."""
    if value is None or shape == ANY:
        return
    if isinstance(shape, dict):
        _check_struct(value, shape, where)
    elif isinstance(shape, ListOf):
        if not isinstance(value, list):
            raise BodyError(f"{where or 'body'} must be a list")
        for i, item in enumerate(value):
            check_shape(item, shape.item, f"{where}[{i}]")
    elif not _is_kind(value, shape):
        raise BodyError(f"{where} must be a {shape}, not {json.dumps(value)[:60]}")


def _is_kind(value: Any, kind: str) -> bool:
    if kind == BOOL:
        return isinstance(value, bool)
    if kind == INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == NUM:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == STR:
        return isinstance(value, str)
    if kind == STRS:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == MAP:
        return isinstance(value, dict)
    return False


def _check_struct(value: Any, shape: dict[str, Shape], where: str) -> None:
    if not isinstance(value, dict):
        raise BodyError(f"{where or 'the body'} must be a JSON object")
    folded = {name.casefold(): name for name in shape}
    seen: dict[str, str] = {}
    for key, item in list(value.items()):
        path = f"{where}.{key}" if where else key
        fold = key.casefold()
        if fold in seen:
            raise BodyError(f"keys {seen[fold]!r} and {key!r} name the same field")
        seen[fold] = key
        if key not in shape:
            if fold in folded:
                raise BodyError(f"field {path!r} must be spelled {folded[fold]!r}")
            if item is None:
                # dockerd ignores an unknown null (docker-py sends {"mynet": null} in
                # NetworkingConfig); drop it so the forwarded body holds only what we read.
                del value[key]
                continue
            raise BodyError(f"unknown field {path!r}")
        check_shape(item, shape[key], path)
