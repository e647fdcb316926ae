"""GPU discovery and usage through NVML (``pynvml``, package ``nvidia-ml-py``), read-only.

Only unprivileged queries: MIG mode is read, never changed. Every NVML error becomes a
problem line and an unusable GPU in the inventory, never an exception out of this module.
Also the ``ds01d --inventory FILE|auto|none`` flag, whose ``auto`` is NVML discovery.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from allocator.inventory import (
    DEFAULT_GPU_SLICES,
    Device,
    Gpu,
    Inventory,
    build_inventory,
    load_inventory_file,
    no_mig_instances,
)

NVML_DEVICE_MIG_ENABLE = 1  # pynvml.NVML_DEVICE_MIG_ENABLE
NVML_GPU_INSTANCE_PROFILE_1_SLICE = 0  # pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE

# The driver names a MIG device "<GPU name> MIG <profile>", e.g.
# "NVIDIA A100-SXM4-80GB MIG 1g.10gb" or "... MIG 1c.3g.40gb"; the profile is the token after.
_MIG_NAME = re.compile(r"\bMIG\s+(\S+)")
_PROFILE_SLICES = re.compile(r"^(?:(\d+)c\.)?(\d+)g\.")


class _Unusable(Exception):
    """A GPU could not be read; carries the problem line."""


def _import_pynvml() -> Any:
    import pynvml  # lazy: a host without nvidia-ml-py still runs with a YAML inventory

    return pynvml


def nvml_inventory(nvml: Any = None) -> Inventory:
    """Every GPU and MIG instance NVML reports; ``nvml`` injects a (fake) pynvml module."""
    if nvml is None:
        try:
            nvml = _import_pynvml()
        except ImportError:
            return Inventory(problems=(_MISSING_MODULE,), source="nvml")
    try:
        nvml.nvmlInit()
    except Exception as exc:  # LibraryNotFound, DriverNotLoaded, NoPermission, ...
        return Inventory(problems=(_init_problem(nvml, exc),), source="nvml")
    try:
        return _scan(nvml)
    finally:
        _shutdown(nvml)


def _scan(nvml: Any) -> Inventory:
    try:
        count = int(nvml.nvmlDeviceGetCount())
    except nvml.NVMLError as exc:
        return Inventory(problems=(f"NVML cannot count the GPUs: {_err(exc)}",), source="nvml")
    gpus: list[Gpu] = []
    mig: list[Device] = []
    problems: list[str] = []
    for index in range(count):
        gpu, devices, notes = _scan_gpu(nvml, index)
        gpus.append(gpu)
        mig.extend(devices)
        problems.extend(notes)
    return build_inventory(gpus, mig, problems=problems, source="nvml")


def _scan_gpu(nvml: Any, index: int) -> tuple[Gpu, list[Device], list[str]]:
    uuid, name, memory = "", "unknown GPU", 0
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        name = _text(nvml.nvmlDeviceGetName(handle))
        memory = int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
        mig_enabled, notes = _mig_mode(nvml, handle, index)
        slices = _gpu_slices(nvml, handle) if mig_enabled else DEFAULT_GPU_SLICES
        gpu = Gpu(
            index=index, uuid=uuid, name=name, memory=memory, mig_enabled=mig_enabled, slices=slices
        )
        devices = _scan_mig(nvml, handle, gpu) if mig_enabled else []
    except Exception as exc:  # NVMLError mostly; anything else must not take the daemon down
        problem = str(exc) if isinstance(exc, _Unusable) else _err(exc)
        gpu = Gpu(index=index, uuid=uuid, name=name, memory=memory, usable=False, problem=problem)
        label = f"GPU {index}" + (f" ({uuid})" if uuid else "")
        return gpu, [], [f"{label}: {problem}; DS01 does not allocate it"]
    if mig_enabled and not devices:
        notes.append(no_mig_instances(gpu))
    return gpu, devices, notes


def _mig_mode(nvml: Any, handle: Any, index: int) -> tuple[bool, list[str]]:
    try:
        current, pending = nvml.nvmlDeviceGetMigMode(handle)
    except nvml.NVMLError_NotSupported:
        return False, []  # not a MIG-capable GPU: a whole GPU
    notes = []
    if pending != current:
        # Someone ran `nvidia-smi -mig`; it takes effect at the next GPU reset. We use what is.
        notes.append(f"GPU {index}: a MIG mode change is pending until the GPU is reset")
    return current == NVML_DEVICE_MIG_ENABLE, notes


def _gpu_slices(nvml: Any, handle: Any) -> int:
    # The number of 1-slice GPU instances a GPU can hold is its slice count (7, or 4 on A30).
    try:
        info = nvml.nvmlDeviceGetGpuInstanceProfileInfo(handle, NVML_GPU_INSTANCE_PROFILE_1_SLICE)
        count = int(info.instanceCount)
    except (nvml.NVMLError, AttributeError):
        return DEFAULT_GPU_SLICES
    return count if count > 0 else DEFAULT_GPU_SLICES


def _scan_mig(nvml: Any, handle: Any, gpu: Gpu) -> list[Device]:
    devices = []
    for slot in range(int(nvml.nvmlDeviceGetMaxMigDeviceCount(handle))):
        try:
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except nvml.NVMLError_NotFound:
            continue  # an empty slot: no MIG device was created there
        name = _text(nvml.nvmlDeviceGetName(mig))
        match = _MIG_NAME.search(name)
        profile = match.group(1) if match else name
        devices.append(
            Device(
                uuid=_text(nvml.nvmlDeviceGetUUID(mig)),
                kind="mig",
                gpu_index=gpu.index,
                gpu_uuid=gpu.uuid,
                profile=profile,
                slices=_mig_slices(nvml, mig, profile, gpu),
                memory=int(nvml.nvmlDeviceGetMemoryInfo(mig).total),
                gi_id=int(nvml.nvmlDeviceGetGpuInstanceId(mig)),
                gpu_slices=gpu.slices,
            )
        )
    return devices


def _mig_slices(nvml: Any, mig: Any, profile: str, gpu: Gpu) -> int:
    # Compute slices, not GPU-instance slices: three 1c.3g instances sharing one 3g GPU
    # instance hold one compute slice each, so the slices of a GPU still add up to 7.
    try:
        attrs = nvml.nvmlDeviceGetAttributes(mig)
        slices = int(attrs.computeInstanceSliceCount) or int(attrs.gpuInstanceSliceCount)
    except nvml.NVMLError:
        slices = 0
    if slices <= 0:
        match = _PROFILE_SLICES.match(profile)  # the naming convention, not a profile table
        slices = int(match.group(1) or match.group(2)) if match else 0
    if not 0 < slices <= gpu.slices:
        raise _Unusable(f"cannot tell how many compute slices MIG instance {profile} has")
    return slices


# ----------------------------------------------------------------------------- usage


@dataclass(frozen=True)
class DeviceUsage:
    """What runs on one device right now, for idle detection; None = could not be read."""

    uuid: str
    processes: int | None = None
    used_memory: int | None = None  # bytes, summed over the compute processes
    gpu_util: int | None = None  # percent; NVML does not report it for MIG instances
    problem: str | None = None

    @property
    def busy(self) -> bool | None:
        """True when a compute process runs on it; None when that is unknown."""
        return None if self.processes is None else self.processes > 0


def nvml_usage(uuids: Iterable[str], nvml: Any = None) -> dict[str, DeviceUsage]:
    """Usage of each device (GPU- or MIG- UUID) in one NVML session."""
    uuids = list(uuids)
    if nvml is None:
        try:
            nvml = _import_pynvml()
        except ImportError:
            return {u: DeviceUsage(u, problem=_MISSING_MODULE) for u in uuids}
    try:
        nvml.nvmlInit()
    except Exception as exc:
        problem = _init_problem(nvml, exc)
        return {u: DeviceUsage(u, problem=problem) for u in uuids}
    try:
        return {u: _usage(nvml, u) for u in uuids}
    finally:
        _shutdown(nvml)


def nvml_processes(nvml: Any, uuid: str) -> DeviceUsage:
    """Running compute processes, their memory and utilisation (where supported) of a device."""
    return nvml_usage([uuid], nvml)[uuid]


def _usage(nvml: Any, uuid: str) -> DeviceUsage:
    try:
        handle = nvml.nvmlDeviceGetHandleByUUID(uuid)
        procs = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except Exception as exc:  # GpuIsLost, NotFound (MIG instance destroyed), ...
        return DeviceUsage(uuid, problem=f"NVML cannot read {uuid}: {_err(exc)}")
    used = sum(int(p.usedGpuMemory) for p in procs if getattr(p, "usedGpuMemory", None))
    try:
        util: int | None = int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except Exception:
        util = None  # NotSupported on MIG instances; idle detection uses processes there
    return DeviceUsage(uuid, processes=len(procs), used_memory=used, gpu_util=util)


# ----------------------------------------------------------------------------- helpers

_MISSING_MODULE = (
    "NVML unavailable: the pynvml module (package nvidia-ml-py) is not installed; "
    "no GPUs are allocated (use --inventory FILE to describe them)"
)


def _init_problem(nvml: Any, exc: Exception) -> str:
    if isinstance(exc, getattr(nvml, "NVMLError_LibraryNotFound", ())):
        return (
            "NVML unavailable: libnvidia-ml.so.1 not found (no NVIDIA driver on this host); "
            "no GPUs are allocated (use --inventory FILE to describe them)"
        )
    return f"NVML failed to start: {_err(exc)}; no GPUs are allocated"


def _shutdown(nvml: Any) -> None:
    with contextlib.suppress(Exception):  # nothing to do: what we needed is already read
        nvml.nvmlShutdown()


def _err(exc: Exception) -> str:
    return f"{exc} ({type(exc).__name__})"


def _text(value: str | bytes) -> str:
    # pynvml decodes to str on Python 3; old versions returned bytes.
    return value.decode() if isinstance(value, bytes) else str(value)


# ----------------------------------------------------------------------------- --inventory


def load_inventory(spec: str) -> Inventory:
    """The inventory for ``ds01d --inventory FILE|auto|none``.

    ``auto`` asks NVML and, where there is no NVIDIA driver, gives an empty inventory whose
    ``problems`` say why; ``none`` is an empty inventory (GPU requests are refused).
    """
    if spec == "none":
        return Inventory(source="none")
    if spec == "auto":
        return nvml_inventory()
    return load_inventory_file(spec)
