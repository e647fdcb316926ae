"""What GPUs a container create asks for, read from ``HostConfig.DeviceRequests``.

Docker CLI ``--gpus`` forms and what dockerd receives:
``--gpus 1`` -> ``{"Driver":"","Count":1,"Capabilities":[["gpu"]]}``; ``--gpus all`` -> Count -1;
``--gpus '"device=0,2"'`` -> Count 0 with DeviceIDs ``["0","2"]``. Compose sends Driver "nvidia".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# Capabilities dockerd's nvidia device driver answers to ("gpu", "nvidia" and the driver
# capabilities it turns into NVIDIA_DRIVER_CAPABILITIES).
SELECTOR_CAPABILITIES = frozenset({"gpu", "nvidia"})
DRIVER_CAPABILITIES = frozenset({"compute", "compat32", "graphics", "utility", "video", "display"})
NVIDIA_DRIVERS = frozenset({"", "nvidia", "nvidia.cdi", "nvidia.runtime-hook"})

_INDEX = re.compile(r"^\d{1,3}$")
_UUID = re.compile(r"^(GPU|MIG)-[A-Za-z0-9./-]+$")


class GpuRequestError(ValueError):
    """A device request DS01 cannot interpret; ``reason`` is for the user."""

    def __init__(self, reason: str, fix: str = "ask with `--gpus N`, e.g. `docker run --gpus 1`"):
        super().__init__(reason)
        self.reason = reason
        self.fix = fix


@dataclass(frozen=True)
class GpuRequest:
    """GPUs asked for: a count, ``all`` (what the policy allows), or explicit device IDs."""

    count: int | None = None  # devices wanted; None with ``all`` or ``device_ids``
    all: bool = False
    device_ids: tuple[str, ...] = ()  # GPU indexes ("0") or GPU-/MIG- UUIDs, as given
    capabilities: tuple[str, ...] = ()  # driver capabilities asked for, e.g. ("utility",)
    profiles: tuple[str, ...] = ()  # preferred MIG profiles; empty: any allowed
    min_memory: int | None = None  # bytes per device, e.g. from a Dev Container's hostRequirements

    @property
    def explicit(self) -> bool:
        return bool(self.device_ids)

    def describe(self) -> str:
        """``1 GPU``, ``all GPUs your policy allows``, ``devices 0, 2``."""
        if self.device_ids:
            return (
                "device" + ("s " if len(self.device_ids) > 1 else " ") + ", ".join(self.device_ids)
            )
        if self.all:
            return "all GPUs your policy allows"
        return f"{self.count} GPU" + ("s" if self.count != 1 else "")


def parse_gpu_request(device_requests: Any) -> GpuRequest | None:
    """The GPU request in a create body's ``HostConfig.DeviceRequests``; None if none.

    Raises ``GpuRequestError`` for anything that is not one plain NVIDIA GPU request: DS01
    cannot decide what it does not understand (fail closed).
    """
    if device_requests is None:
        return None
    if not isinstance(device_requests, list):
        raise GpuRequestError("HostConfig.DeviceRequests must be a list")
    if not device_requests:
        return None
    if len(device_requests) > 1:
        raise GpuRequestError(
            f"{len(device_requests)} device requests in one container; DS01 handles one",
            "ask once, e.g. `--gpus 2` instead of several --gpus options",
        )
    entry = device_requests[0]
    if not isinstance(entry, dict):
        raise GpuRequestError("a device request must be a JSON object")
    unknown = set(entry) - {"Driver", "Count", "DeviceIDs", "Capabilities", "Options"}
    if unknown:
        raise GpuRequestError(f"unknown field {sorted(unknown)[0]!r} in the device request")
    driver = _driver(entry.get("Driver"))
    capabilities = _capabilities(entry.get("Capabilities"), driver)
    options = entry.get("Options")
    if options is not None and not isinstance(options, dict):
        raise GpuRequestError("the device request's Options must be an object")
    # Options are ignored: dockerd's nvidia driver does not read them, and the gateway
    # re-serialises the request without them.
    count = _count(entry.get("Count"))
    device_ids = _device_ids(entry.get("DeviceIDs"))
    if device_ids and count:
        # dockerd: "cannot set both Count and DeviceIDs on device request"
        raise GpuRequestError(
            "the GPU request sets both a count and device IDs",
            "ask for a count (`--gpus 1`) or for devices (`--gpus device=0`), not both",
        )
    if device_ids:
        return GpuRequest(device_ids=device_ids, capabilities=capabilities)
    if count == 0:
        return None  # dockerd gives NVIDIA_VISIBLE_DEVICES=void: no GPU at all
    if count == -1:
        return GpuRequest(all=True, capabilities=capabilities)
    return GpuRequest(count=count, capabilities=capabilities)


def _driver(value: Any) -> str:
    driver = "" if value is None else value
    if not isinstance(driver, str) or driver not in NVIDIA_DRIVERS:
        raise GpuRequestError(
            f"device driver {value!r} is not supported; DS01 allocates NVIDIA GPUs",
            "use `--gpus N` (driver nvidia)",
        )
    return driver


def _capabilities(value: Any, driver: str) -> tuple[str, ...]:
    if value is None or value == [] or value == [[]]:
        if driver == "":
            # dockerd picks a driver by capability; with none it picks nothing and fails.
            raise GpuRequestError("a device request without a driver must ask for capability gpu")
        return ()
    if (
        not isinstance(value, list)
        or len(value) != 1
        or not isinstance(value[0], list)
        or not all(isinstance(c, str) for c in value[0])
    ):
        raise GpuRequestError('the device request\'s Capabilities must be one list, e.g. [["gpu"]]')
    caps = {c.strip().lower() for c in value[0] if c.strip()}
    unknown = caps - SELECTOR_CAPABILITIES - DRIVER_CAPABILITIES
    if unknown:
        raise GpuRequestError(
            f"device capability {sorted(unknown)[0]!r} is not an NVIDIA GPU capability",
            "use `--gpus N`; capabilities may be gpu, compute, utility, graphics, video, "
            "display, compat32",
        )
    if driver == "" and not caps & SELECTOR_CAPABILITIES and not caps & DRIVER_CAPABILITIES:
        raise GpuRequestError("a device request without a driver must ask for capability gpu")
    return tuple(sorted(caps & DRIVER_CAPABILITIES))


def _count(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < -1:
        raise GpuRequestError(f"GPU count {value!r} is not a number of GPUs (or -1 for all)")
    return value


def _device_ids(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise GpuRequestError("DeviceIDs must be a list of strings")
    ids = tuple(v.strip() for v in value if v.strip())
    for device_id in ids:
        if not (_INDEX.match(device_id) or _UUID.match(device_id)):
            raise GpuRequestError(
                f"device {device_id!r} is not a GPU index or a GPU-/MIG- UUID",
                "name devices as shown by `ds01 gpus` (index or UUID), or use `--gpus 1`",
            )
    if len(set(ids)) != len(ids):
        raise GpuRequestError("the same device is named twice in the GPU request")
    return ids


# ----------------------------------------------------------------------------- rewrite


def device_requests_for(devices: Sequence[str], request: GpuRequest | None) -> list[dict[str, Any]]:
    """The ``HostConfig.DeviceRequests`` the gateway forwards for the granted device UUIDs."""
    if not devices:
        return []
    caps = ["gpu", *(request.capabilities if request else ())]
    return [{"Driver": "nvidia", "DeviceIDs": list(devices), "Capabilities": [caps]}]


def visible_devices(devices: Iterable[str]) -> str:
    """The ``NVIDIA_VISIBLE_DEVICES`` value: exactly the granted UUIDs, or ``void`` for none."""
    joined = ",".join(devices)
    return joined or "void"
