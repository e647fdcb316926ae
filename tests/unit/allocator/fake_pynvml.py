"""A fake ``pynvml`` module: the API surface DS01 uses, with NVML's errors and behaviours.

Built from a small description (``FakeGpu``/``FakeMig``). Like the real module: error classes
named ``NVMLError_<Name>`` under ``NVMLError`` (``NVMLError(6)`` is an ``NVMLError_NotFound``),
``Uninitialized`` before ``nvmlInit``, ``NotFound`` for empty MIG slots, ``NotSupported`` for MIG
calls on GPUs without MIG. Every call is recorded in ``calls`` so tests can check no setter ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999


class NVMLError(Exception):
    """Base of the NVML errors; ``NVMLError(code)`` builds the matching subclass, as in pynvml."""

    _by_value: dict[int, type[NVMLError]] = {}
    value: int

    def __new__(cls, value: int | None = None) -> NVMLError:
        if cls is NVMLError and value in NVMLError._by_value:
            cls = NVMLError._by_value[value]
        obj = Exception.__new__(cls)
        obj.value = value if value is not None else getattr(cls, "_code", NVML_ERROR_UNKNOWN)
        return obj

    def __init__(self, value: int | None = None) -> None:
        super().__init__(self.value)

    def __str__(self) -> str:
        return _STRINGS.get(self.value, f"NVML Error with code {self.value}")


_STRINGS = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


def _error_class(name: str, code: int) -> type[NVMLError]:
    cls = type(f"NVMLError_{name}", (NVMLError,), {"_code": code})
    NVMLError._by_value[code] = cls
    return cls


NVMLError_Uninitialized = _error_class("Uninitialized", NVML_ERROR_UNINITIALIZED)
NVMLError_InvalidArgument = _error_class("InvalidArgument", NVML_ERROR_INVALID_ARGUMENT)
NVMLError_NotSupported = _error_class("NotSupported", NVML_ERROR_NOT_SUPPORTED)
NVMLError_NoPermission = _error_class("NoPermission", NVML_ERROR_NO_PERMISSION)
NVMLError_NotFound = _error_class("NotFound", NVML_ERROR_NOT_FOUND)
NVMLError_DriverNotLoaded = _error_class("DriverNotLoaded", NVML_ERROR_DRIVER_NOT_LOADED)
NVMLError_LibraryNotFound = _error_class("LibraryNotFound", NVML_ERROR_LIBRARY_NOT_FOUND)
NVMLError_GpuIsLost = _error_class("GpuIsLost", NVML_ERROR_GPU_IS_LOST)
NVMLError_Unknown = _error_class("Unknown", NVML_ERROR_UNKNOWN)

GiB = 2**30


@dataclass
class FakeProcess:
    pid: int
    usedGpuMemory: int | None  # pynvml's field name


@dataclass
class FakeMig:
    """One MIG device (a compute instance in a GPU instance)."""

    uuid: str
    profile: str  # "1g.10gb": the device is named "<GPU name> MIG <profile>"
    gi: int
    slices: int  # compute-instance slices
    memory: int
    gi_slices: int | None = None  # defaults to ``slices``
    slot: int | None = None  # index in the MIG handle table; defaults to list position
    processes: list[FakeProcess] = field(default_factory=list)
    no_attributes: bool = False  # nvmlDeviceGetAttributes answers NotSupported (old driver)


@dataclass
class FakeGpu:
    """One physical GPU. ``mig=None``: not MIG-capable (MIG calls answer NotSupported)."""

    uuid: str
    name: str = "NVIDIA A100-SXM4-80GB"
    memory: int = 80 * GiB
    mig: list[FakeMig] | None = None
    mig_mode: tuple[int, int] | None = None  # defaults: (1, 1) when mig is non-empty
    slices: int = 7
    max_mig: int = 7
    lost: bool = False  # every call on this GPU answers GpuIsLost
    fail: dict[str, type[NVMLError]] = field(default_factory=dict)  # call name -> error
    processes: list[FakeProcess] = field(default_factory=list)
    util: int = 0


@dataclass(frozen=True)
class _Handle:
    gpu: FakeGpu
    mig: FakeMig | None = None


class FakeNvml:
    """The module object handed to ``nvml_inventory(nvml=...)``."""

    NVMLError = NVMLError
    NVMLError_Uninitialized = NVMLError_Uninitialized
    NVMLError_InvalidArgument = NVMLError_InvalidArgument
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_NoPermission = NVMLError_NoPermission
    NVMLError_NotFound = NVMLError_NotFound
    NVMLError_DriverNotLoaded = NVMLError_DriverNotLoaded
    NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
    NVMLError_GpuIsLost = NVMLError_GpuIsLost
    NVMLError_Unknown = NVMLError_Unknown
    NVML_DEVICE_MIG_DISABLE = 0
    NVML_DEVICE_MIG_ENABLE = 1
    NVML_GPU_INSTANCE_PROFILE_1_SLICE = 0

    def __init__(self, gpus: list[FakeGpu], *, init_error: type[NVMLError] | None = None):
        self.gpus = gpus
        self.init_error = init_error
        self.initialised = 0  # NVML reference-counts init/shutdown
        self.calls: list[str] = []

    # -- session
    def nvmlInit(self) -> None:
        self.calls.append("nvmlInit")
        if self.init_error is not None:
            raise self.init_error()
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self.initialised -= 1

    # -- devices
    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._enter("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise NVMLError_InvalidArgument()
        return self._check(_Handle(self.gpus[index]), "nvmlDeviceGetHandleByIndex")

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> _Handle:
        self._enter("nvmlDeviceGetHandleByUUID")
        text = uuid.decode() if isinstance(uuid, bytes) else uuid
        for gpu in self.gpus:
            if gpu.uuid == text:
                return self._check(_Handle(gpu), "nvmlDeviceGetHandleByUUID")
            for mig in self._mig_devices(gpu):
                if mig.uuid == text:
                    return self._check(_Handle(gpu, mig), "nvmlDeviceGetHandleByUUID")
        raise NVMLError_NotFound()

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:
        self._call("nvmlDeviceGetUUID", handle)
        return handle.mig.uuid if handle.mig else handle.gpu.uuid

    def nvmlDeviceGetName(self, handle: _Handle) -> str:
        self._call("nvmlDeviceGetName", handle)
        if handle.mig:
            return f"{handle.gpu.name} MIG {handle.mig.profile}"
        return handle.gpu.name

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle) -> SimpleNamespace:
        self._call("nvmlDeviceGetMemoryInfo", handle)
        total = handle.mig.memory if handle.mig else handle.gpu.memory
        used = sum(p.usedGpuMemory or 0 for p in self._procs(handle))
        return SimpleNamespace(total=total, free=total - used, used=used)

    def nvmlDeviceGetMigMode(self, handle: _Handle) -> list[int]:
        self._call("nvmlDeviceGetMigMode", handle)
        if handle.gpu.mig is None or handle.mig is not None:
            raise NVMLError_NotSupported()
        return list(self._mode(handle.gpu))

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: _Handle) -> int:
        self._call("nvmlDeviceGetMaxMigDeviceCount", handle)
        if handle.gpu.mig is None:
            raise NVMLError_NotSupported()
        return handle.gpu.max_mig

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: _Handle, index: int) -> _Handle:
        self._call("nvmlDeviceGetMigDeviceHandleByIndex", handle)
        if handle.gpu.mig is None or handle.mig is not None:
            raise NVMLError_NotSupported()
        if self._mode(handle.gpu)[0] != 1 or not 0 <= index < handle.gpu.max_mig:
            raise NVMLError_InvalidArgument()
        for position, mig in enumerate(handle.gpu.mig):
            if (mig.slot if mig.slot is not None else position) == index:
                return _Handle(handle.gpu, mig)
        raise NVMLError_NotFound()  # an empty slot

    def nvmlDeviceGetGpuInstanceId(self, handle: _Handle) -> int:
        self._call("nvmlDeviceGetGpuInstanceId", handle)
        if handle.mig is None:
            raise NVMLError_InvalidArgument()
        return handle.mig.gi

    def nvmlDeviceGetAttributes(self, handle: _Handle) -> SimpleNamespace:
        self._call("nvmlDeviceGetAttributes", handle)
        if handle.mig is None or handle.mig.no_attributes:
            raise NVMLError_NotSupported()
        mig = handle.mig
        return SimpleNamespace(
            multiprocessorCount=14 * mig.slices,
            sharedCopyEngineCount=mig.slices,
            sharedDecoderCount=0,
            sharedEncoderCount=0,
            sharedJpegCount=0,
            sharedOfaCount=0,
            gpuInstanceSliceCount=mig.gi_slices or mig.slices,
            computeInstanceSliceCount=mig.slices,
            memorySizeMB=mig.memory // 2**20,
        )

    def nvmlDeviceGetGpuInstanceProfileInfo(
        self, handle: _Handle, profile: int, version: int = 2
    ) -> SimpleNamespace:
        self._call("nvmlDeviceGetGpuInstanceProfileInfo", handle)
        if handle.gpu.mig is None:
            raise NVMLError_NotSupported()
        if profile != 0:
            raise NVMLError_NotSupported()  # the fake knows only the 1-slice profile
        return SimpleNamespace(id=0, sliceCount=1, instanceCount=handle.gpu.slices)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: _Handle) -> list[FakeProcess]:
        self._call("nvmlDeviceGetComputeRunningProcesses", handle)
        return list(self._procs(handle))

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> SimpleNamespace:
        self._call("nvmlDeviceGetUtilizationRates", handle)
        if handle.mig is not None:
            raise NVMLError_NotSupported()
        return SimpleNamespace(gpu=handle.gpu.util, memory=0)

    # -- behaviour
    def _enter(self, name: str) -> None:
        self.calls.append(name)
        if self.initialised <= 0:
            raise NVMLError_Uninitialized()

    def _call(self, name: str, handle: _Handle) -> None:
        self._enter(name)
        self._check(handle, name)

    def _check(self, handle: _Handle, name: str) -> _Handle:
        if handle.gpu.lost:
            raise NVMLError_GpuIsLost()
        if name in handle.gpu.fail:
            raise handle.gpu.fail[name]()
        return handle

    @staticmethod
    def _mode(gpu: FakeGpu) -> tuple[int, int]:
        if gpu.mig_mode is not None:
            return gpu.mig_mode
        return (1, 1) if gpu.mig else (0, 0)

    def _mig_devices(self, gpu: FakeGpu) -> list[FakeMig]:
        return list(gpu.mig or []) if self._mode(gpu)[0] == 1 else []

    @staticmethod
    def _procs(handle: _Handle) -> list[FakeProcess]:
        return handle.mig.processes if handle.mig else handle.gpu.processes


def example_host() -> list[FakeGpu]:
    """The host of ``config/inventory.example.yaml``: two MIG A100s and two whole GPUs."""
    first = [
        FakeMig(f"MIG-0000000{i}-0000-0000-0000-000000000000", "1g.10gb", 7 + i, 1, 10 * GiB)
        for i in range(7)
    ]
    second = [
        FakeMig("MIG-10000000-0000-0000-0000-000000000000", "3g.40gb", 2, 3, 40 * GiB),
        FakeMig("MIG-10000001-0000-0000-0000-000000000000", "2g.20gb", 3, 2, 20 * GiB),
        FakeMig("MIG-10000002-0000-0000-0000-000000000000", "1g.10gb", 9, 1, 10 * GiB),
        FakeMig("MIG-10000003-0000-0000-0000-000000000000", "1g.10gb", 10, 1, 10 * GiB),
    ]
    return [
        FakeGpu("GPU-00000000-0000-0000-0000-000000000000", mig=first),
        FakeGpu("GPU-00000001-0000-0000-0000-000000000000", mig=second),
        FakeGpu("GPU-00000002-0000-0000-0000-000000000000", mig=[], mig_mode=(0, 0)),
        FakeGpu("GPU-00000003-0000-0000-0000-000000000000", name="NVIDIA L40S", memory=48 * GiB),
    ]
