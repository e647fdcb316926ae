"""Shared helpers for the allocator tests: limits, the example inventory, containers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from allocator.inventory import Inventory, load_inventory_file
from allocator.reconcile import ContainerSummary
from formats.labels import allocation_labels
from policy.limits import Limits

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "config" / "inventory.example.yaml"

# The example inventory's devices, by role.
G0 = [f"MIG-1a2b3c4d-0000-0000-0000-00000000000{i}" for i in range(7)]  # GPU 0: 7 x 1g.10gb
G1_3G = "MIG-2b3c4d5e-0000-0000-0000-000000000000"
G1_2G = "MIG-2b3c4d5e-0000-0000-0000-000000000001"
G1_1G = ["MIG-2b3c4d5e-0000-0000-0000-000000000002", "MIG-2b3c4d5e-0000-0000-0000-000000000003"]
GPU0 = "GPU-5f6c0d2e-0000-0000-0000-000000000000"
GPU1 = "GPU-6a7b8c9d-0000-0000-0000-000000000000"
GPU2 = "GPU-7c8d9e0f-0000-0000-0000-000000000000"
GPU3 = "GPU-8d9e0f1a-0000-0000-0000-000000000000"

NOW = 1_700_000_000.0


def example_inventory() -> Inventory:
    return load_inventory_file(str(EXAMPLE))


def limits(user: str = "alice", group: str = "students", **values: Any) -> Limits:
    """Limits with the built-in defaults, overridden by ``values``."""
    return Limits(user=user, group=group, **values)


def student(user: str = "alice", **values: Any) -> Limits:
    """The default policy's student: one MIG instance, at most 1 GPU-equivalent."""
    base = dict(
        priority=10,
        max_gpus=0,
        max_mig_instances=1,
        max_gpu_equivalents=1.0,
        max_gpus_per_container=1,
        allow_full_gpu=False,
    )
    return limits(user, "students", **{**base, **values})


def researcher(user: str = "rita", **values: Any) -> Limits:
    """A researcher: whole GPUs allowed, two of them, MIG too."""
    base = dict(
        priority=50,
        max_gpus=2,
        max_mig_instances=2,
        max_gpu_equivalents=2.0,
        max_gpus_per_container=2,
        allow_full_gpu=True,
    )
    return limits(user, "researchers", **{**base, **values})


def container(
    cid: str,
    user: str,
    devices: list[str],
    *,
    state: str = "running",
    at: float = NOW - 3600,
    finished_at: float | None = None,
    gpueq: float = 0.0,
    given: list[str] | None = None,
) -> ContainerSummary:
    """A DS01-created container summary with its labels.

    ``given``: the devices its DeviceRequests name, when they differ from its labels.
    """
    labels = allocation_labels(
        user=user, uid=1000, group="students", devices=devices, gpueq=gpueq, at=at
    )
    real = tuple(devices if given is None else given)
    return ContainerSummary(cid, labels, state, finished_at, gpu_devices=real)
