"""What GPUs and MIG instances this host has: value types, and the YAML inventory file.

A whole GPU is allocatable only when it is not split into MIG instances; then its MIG
instances are. NVML discovery lives in ``ds01d.host.nvml`` (hardware I/O); both produce an ``Inventory``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from formats.units import UnitError, parse_size

DeviceKind = Literal["gpu", "mig"]

# NVIDIA MIG GPUs have 7 compute slices (A100, H100, H200, B200); an A30 has 4.
DEFAULT_GPU_SLICES = 7


class InventoryError(ValueError):
    """The inventory file is unreadable or invalid; the message names the file and the key."""


@dataclass(frozen=True)
class Gpu:
    """A physical GPU as the driver reports it."""

    index: int
    uuid: str
    name: str
    memory: int  # bytes
    mig_enabled: bool = False
    usable: bool = True
    problem: str | None = None
    slices: int = DEFAULT_GPU_SLICES  # compute slices the whole GPU has (MIG denominator)


@dataclass(frozen=True)
class Device:
    """The allocatable unit: a whole GPU (``GPU-...``) or one MIG instance (``MIG-...``)."""

    uuid: str
    kind: DeviceKind
    gpu_index: int
    gpu_uuid: str
    profile: str  # MIG profile as the driver reports it ("1g.10gb"), or the GPU's name
    slices: int  # compute slices; a whole GPU has all of them
    memory: int  # bytes
    gi_id: int | None = None  # GPU-instance id (MIG only)
    gpu_slices: int = DEFAULT_GPU_SLICES

    @property
    def is_mig(self) -> bool:
        return self.kind == "mig"

    @property
    def gpueq(self) -> float:
        """GPU-equivalents: 1 for a whole GPU, its share of the compute slices for MIG."""
        if self.kind == "gpu":
            return 1.0
        return self.slices / self.gpu_slices

    @property
    def short(self) -> str:
        return short_uuid(self.uuid)

    def describe(self) -> str:
        """``GPU 1 MIG 3g.40gb (MIG-1a2b3c4d…)`` or ``GPU 2 (GPU-5f6c0d2e…)``."""
        if self.kind == "mig":
            return f"GPU {self.gpu_index} MIG {self.profile} ({self.short})"
        return f"GPU {self.gpu_index} ({self.short})"


def short_uuid(uuid: str) -> str:
    """A UUID short enough for a message but still recognisable: ``MIG-1a2b3c4d…``."""
    prefix, _, rest = uuid.partition("-")
    return f"{prefix}-{rest[:8]}…" if len(rest) > 8 else uuid


def sort_key(device: Device) -> tuple[int, int, str]:
    """The deterministic order of devices: GPU index, then GPU-instance id, then UUID."""
    return (device.gpu_index, device.gi_id if device.gi_id is not None else -1, device.uuid)


@dataclass(frozen=True)
class Inventory:
    """Every GPU of the host, the devices DS01 may allocate, and what is wrong (if anything)."""

    gpus: tuple[Gpu, ...] = ()
    devices: tuple[Device, ...] = ()
    problems: tuple[str, ...] = ()
    source: str = "none"
    _by_uuid: dict[str, Device] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "devices", tuple(sorted(self.devices, key=sort_key)))
        self._by_uuid.update({d.uuid: d for d in self.devices})

    def device(self, uuid: str) -> Device | None:
        """The allocatable device with this UUID, or None."""
        return self._by_uuid.get(uuid)

    def gpu(self, index: int) -> Gpu | None:
        return next((g for g in self.gpus if g.index == index), None)

    def gpu_by_uuid(self, uuid: str) -> Gpu | None:
        return next((g for g in self.gpus if g.uuid == uuid), None)

    def devices_of(self, gpu_index: int) -> tuple[Device, ...]:
        return tuple(d for d in self.devices if d.gpu_index == gpu_index)

    def resolve(self, device_id: str) -> Device | None:
        """The device a Docker device ID names: a GPU index (``"0"``) or a GPU-/MIG- UUID.

        An index or GPU UUID of a MIG-enabled GPU resolves to nothing: it is not allocatable.
        """
        text = device_id.strip()
        if text.isdigit():
            gpu = self.gpu(int(text))
            return self.device(gpu.uuid) if gpu is not None else None
        return self.device(text)


def build_inventory(
    gpus: Iterable[Gpu], mig: Iterable[Device], *, problems: Iterable[str] = (), source: str
) -> Inventory:
    """An inventory from GPUs and MIG devices: whole devices for usable non-MIG GPUs only."""
    gpus = tuple(sorted(gpus, key=lambda g: g.index))
    usable = {g.uuid for g in gpus if g.usable}
    devices = [
        Device(
            uuid=g.uuid,
            kind="gpu",
            gpu_index=g.index,
            gpu_uuid=g.uuid,
            profile=g.name,
            slices=g.slices,
            memory=g.memory,
            gpu_slices=g.slices,
        )
        for g in gpus
        if g.usable and not g.mig_enabled
    ]
    devices += [d for d in mig if d.gpu_uuid in usable]
    return Inventory(gpus=gpus, devices=tuple(devices), problems=tuple(problems), source=source)


# ----------------------------------------------------------------------------- YAML file

_GPU_KEYS = {"index", "uuid", "name", "memory", "mig", "slices", "usable", "problem"}
_MIG_KEYS = {"uuid", "profile", "slices", "memory", "gi"}
_UUID = re.compile(r"^(GPU|MIG)-[A-Za-z0-9./-]+$")


def load_inventory_file(path: str) -> Inventory:
    """Read and validate an inventory YAML file; ``InventoryError`` names the file and key."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise InventoryError(f"{path}: cannot read the inventory file: {exc.strerror}") from exc
    return parse_inventory(text, path)


def parse_inventory(text: str, source: str = "<inventory>") -> Inventory:
    """Validate the YAML inventory format (see ``config/inventory.example.yaml``)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InventoryError(f"{source}: not valid YAML: {exc}") from exc
    if data is None:
        data = {"gpus": []}
    if not isinstance(data, dict) or set(data) - {"gpus"}:
        raise InventoryError(f"{source}: expected a mapping with a single key `gpus`")
    entries = data.get("gpus")
    entries = [] if entries is None else entries
    if not isinstance(entries, list):
        raise InventoryError(f"{source}: gpus: expected a list of GPUs")
    gpus: list[Gpu] = []
    mig: list[Device] = []
    problems: list[str] = []
    for i, entry in enumerate(entries):
        gpu, devices = _parse_gpu(entry, f"{source}: gpus[{i}]")
        gpus.append(gpu)
        mig.extend(devices)
        if gpu.problem:
            problems.append(f"GPU {gpu.index} ({gpu.uuid}): {gpu.problem}")
    _check_unique(source, gpus, mig)
    return build_inventory(gpus, mig, problems=problems, source=source)


def _parse_gpu(entry: Any, where: str) -> tuple[Gpu, list[Device]]:
    if not isinstance(entry, dict):
        raise InventoryError(f"{where}: expected a mapping with index, uuid, name, memory")
    _check_keys(entry, _GPU_KEYS, {"index", "uuid", "name", "memory"}, where)
    index = _int(entry["index"], f"{where}.index", minimum=0)
    uuid = _uuid(entry["uuid"], f"{where}.uuid", "GPU")
    name = _str(entry["name"], f"{where}.name")
    memory = _size(entry["memory"], f"{where}.memory")
    slices = _int(entry.get("slices", DEFAULT_GPU_SLICES), f"{where}.slices", minimum=1)
    usable = entry.get("usable", True)
    if not isinstance(usable, bool):
        raise InventoryError(f"{where}.usable: expected true or false, got {usable!r}")
    problem = entry.get("problem")
    if problem is not None:
        problem = _str(problem, f"{where}.problem")
        usable = False  # a GPU with a problem is never allocated
    mig_entries = entry.get("mig")
    mig_entries = [] if mig_entries is None else mig_entries
    if not isinstance(mig_entries, list):
        raise InventoryError(f"{where}.mig: expected a list of MIG instances")
    devices = [
        _parse_mig(m, f"{where}.mig[{j}]", index, uuid, slices) for j, m in enumerate(mig_entries)
    ]
    used = sum(d.slices for d in devices)
    if used > slices:
        raise InventoryError(
            f"{where}.mig: the MIG instances use {used} compute slices, the GPU has {slices}"
        )
    gpu = Gpu(
        index=index,
        uuid=uuid,
        name=name,
        memory=memory,
        mig_enabled=bool(devices),
        usable=usable and problem is None,
        problem=problem,
        slices=slices,
    )
    return gpu, devices


def _parse_mig(entry: Any, where: str, gpu_index: int, gpu_uuid: str, gpu_slices: int) -> Device:
    if not isinstance(entry, dict):
        raise InventoryError(f"{where}: expected a mapping with uuid, profile, slices, memory")
    _check_keys(entry, _MIG_KEYS, {"uuid", "profile", "slices", "memory"}, where)
    gi = entry.get("gi")
    return Device(
        uuid=_uuid(entry["uuid"], f"{where}.uuid", "MIG"),
        kind="mig",
        gpu_index=gpu_index,
        gpu_uuid=gpu_uuid,
        profile=_str(entry["profile"], f"{where}.profile"),
        slices=_int(entry["slices"], f"{where}.slices", minimum=1, maximum=gpu_slices),
        memory=_size(entry["memory"], f"{where}.memory"),
        gi_id=None if gi is None else _int(gi, f"{where}.gi", minimum=0),
        gpu_slices=gpu_slices,
    )


def _check_unique(source: str, gpus: list[Gpu], mig: list[Device]) -> None:
    seen: set[object] = set()
    for gpu in gpus:
        if gpu.index in seen:
            raise InventoryError(f"{source}: GPU index {gpu.index} appears twice")
        seen.add(gpu.index)
    uuids = [g.uuid for g in gpus] + [d.uuid for d in mig]
    for uuid in uuids:
        if uuid in seen:
            raise InventoryError(f"{source}: UUID {uuid} appears twice")
        seen.add(uuid)


def no_mig_instances(gpu: Gpu) -> str:
    """The problem line for a GPU in MIG mode without instances."""
    return (
        f"GPU {gpu.index} ({gpu.uuid}) is in MIG mode but has no MIG instances: nothing on it "
        "can be allocated until an admin creates them (nvidia-smi mig -cgi ... -C)"
    )


def _check_keys(entry: dict[str, Any], allowed: set[str], required: set[str], where: str) -> None:
    unknown = sorted(set(entry) - allowed, key=str)
    if unknown:
        raise InventoryError(
            f"{where}: unknown key {unknown[0]!r} (expected one of {', '.join(sorted(allowed))})"
        )
    missing = sorted(required - set(entry))
    if missing:
        raise InventoryError(f"{where}: missing key {missing[0]!r}")


def _int(value: Any, where: str, *, minimum: int, maximum: int | None = None) -> int:
    bad = isinstance(value, bool) or not isinstance(value, int)
    if bad or value < minimum or (maximum is not None and value > maximum):
        upper = f"..{maximum}" if maximum is not None else " or more"
        raise InventoryError(f"{where}: expected an integer {minimum}{upper}, got {value!r}")
    return int(value)


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InventoryError(f"{where}: expected a non-empty string, got {value!r}")
    return value.strip()


def _uuid(value: Any, where: str, prefix: str) -> str:
    text = _str(value, where)
    if not _UUID.match(text) or not text.startswith(prefix + "-"):
        raise InventoryError(f"{where}: expected a UUID starting with {prefix}-, got {value!r}")
    return text


def _size(value: Any, where: str) -> int:
    try:
        size = parse_size(value)
    except UnitError as exc:
        raise InventoryError(f"{where}: {exc}") from exc
    if size is None:
        raise InventoryError(f"{where}: expected a size like 80g, got null")
    return size
