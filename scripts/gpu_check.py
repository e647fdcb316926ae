"""`make gpu-check`: DS01's NVML backend and GPU allocator against this host's real devices.

On a machine with an NVIDIA driver (pynvml importable, ``nvmlInit`` succeeds) it prints what
DS01 would see and do: the inventory (GPUs, MIG mode, MIG instances), what runs on each
device (processes, memory, utilisation), a few utilisation samples judged the way the
lifecycle judges idleness, and where the allocator would place a few typical requests. It only
reads: no MIG change, no container, and every reservation is rolled back. Elsewhere it says
why it skipped and exits 0. It exits 1 when a device could not be read.

    python -m scripts.gpu_check [--samples N] [--interval SECONDS]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from allocator.inventory import Inventory
from allocator.ledger import Ledger, Reservation
from allocator.request import GpuRequest
from ds01d.host.nvml import DeviceUsage, nvml_inventory, nvml_usage
from policy.lifecycle import gpu_busy
from policy.limits import Limits

SKIP = "gpu-check skipped: {why}. It needs an NVIDIA driver and the nvidia-ml-py package."

# Typical requests, as the default policy's groups would make them (name, limits, request).
STUDENT = dict(max_gpus=0, max_mig_instances=1, max_gpu_equivalents=1.0, allow_full_gpu=False)
RESEARCHER = dict(max_gpus=2, max_mig_instances=2, max_gpu_equivalents=2.0, allow_full_gpu=True)
REQUESTS: tuple[tuple[str, str, dict[str, Any], GpuRequest], ...] = (
    ("student", "students", STUDENT, GpuRequest(count=1)),
    ("researcher", "researchers", RESEARCHER, GpuRequest(count=1)),
    ("researcher2", "researchers", RESEARCHER, GpuRequest(count=2)),
    ("researcher3", "researchers", RESEARCHER, GpuRequest(all=True)),
)


def gib(value: int | None) -> str:
    return f"{(value or 0) / 2**30:.1f} GiB"


def load_pynvml() -> Any:
    import pynvml  # nvidia-ml-py; absent on hosts without NVIDIA

    return pynvml


def driver_problem(nvml: Any, out: TextIO) -> str | None:
    """Why NVML cannot be used here, or None when ``nvmlInit`` succeeds."""
    try:
        nvml.nvmlInit()
    except Exception as exc:  # LibraryNotFound, DriverNotLoaded, NoPermission...
        return f"NVML did not start ({exc}, {type(exc).__name__})"
    try:
        driver = nvml.nvmlSystemGetDriverVersion()
    except Exception:  # older bindings or fakes: the version is only informative
        driver = None
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()
    if driver:
        text = driver if isinstance(driver, str) else driver.decode()
        print(f"NVIDIA driver {text}", file=out)
    return None


def show_inventory(inventory: Inventory, out: TextIO) -> None:
    print(
        f"\n== Inventory ({len(inventory.gpus)} GPUs, {len(inventory.devices)} devices)", file=out
    )
    for gpu in inventory.gpus:
        mode = f"MIG on, {gpu.slices} slices" if gpu.mig_enabled else "whole GPU"
        state = "" if gpu.usable else f"  UNUSABLE: {gpu.problem}"
        print(
            f"GPU {gpu.index} {gpu.uuid} {gpu.name} {gib(gpu.memory)} ({mode}){state}",
            file=out,
        )
    for device in inventory.devices:
        slices = f"{device.slices} slices, " if device.kind == "mig" else ""
        extra = f" GI {device.gi_id}" if device.gi_id is not None else ""
        print(
            f"  {device.kind:3} {device.uuid} on GPU {device.gpu_index}: {device.profile}, "
            f"{slices}{gib(device.memory)}, {device.gpueq:.3f} GPU-eq{extra}",
            file=out,
        )
    for problem in inventory.problems:
        print(f"  problem: {problem}", file=out)


def show_usage(usage: dict[str, DeviceUsage], out: TextIO) -> int:
    """Per-device processes, memory and utilisation; the number of devices NVML could not read."""
    print("\n== What runs on each device", file=out)
    unreadable = 0
    for uuid, use in usage.items():
        if use.problem:
            unreadable += 1
            print(f"{uuid}: cannot read ({use.problem})", file=out)
            continue
        util = "n/a (MIG)" if use.gpu_util is None else f"{use.gpu_util}%"
        memory = gib(use.used_memory)
        print(f"{uuid}: {use.processes} processes, {memory} used, utilisation {util}", file=out)
    return unreadable


def show_idleness(
    uuids: list[str],
    read: Callable[[list[str]], dict[str, DeviceUsage]],
    samples: int,
    interval: float,
    out: TextIO,
) -> None:
    """Sample like the lifecycle does, and say whether each device would count as busy."""
    threshold = Limits(user="", group="default").idle_gpu_percent
    print(
        f"\n== Idleness ({samples} samples, {interval:g}s apart, busy at >= {threshold:g}%)",
        file=out,
    )
    verdicts: dict[str, list[bool | None]] = {uuid: [] for uuid in uuids}
    for n in range(samples):
        if n:
            time.sleep(interval)
        for uuid, use in read(uuids).items():
            verdicts[uuid].append(gpu_busy([(use.processes, use.gpu_util)], threshold))
    for uuid, seen in verdicts.items():
        marks = "".join("B" if v else "?" if v is None else "." for v in seen)
        verdict = "busy" if any(seen) else "unknown" if None in seen else "idle"
        print(f"{uuid}: {marks}  -> {verdict}", file=out)
    print("(B busy, . idle, ? unreadable)", file=out)


def show_placement(inventory: Inventory, out: TextIO) -> None:
    """Where the allocator would put a few requests, one after the other; all rolled back."""
    print("\n== Placement (reservations only, rolled back; no container is started)", file=out)
    ledger = Ledger(inventory)
    now = time.time()
    taken: list[Reservation] = []
    for user, group, values, request in REQUESTS:
        limits = Limits(user=user, group=group, **values)
        result = ledger.reserve(user, None, group, limits, request, now)
        if isinstance(result, Reservation):
            taken.append(result)
            where = ", ".join(f"{d.uuid} ({d.profile})" for d in result.devices)
            print(f"{user} ({group}) asks {request.describe()}: {where}", file=out)
        else:
            print(f"{user} ({group}) asks {request.describe()}: refused, {result.reason}", file=out)
    for reservation in taken:
        ledger.rollback(reservation.reservation_id)


def run(nvml: Any, samples: int, interval: float, out: TextIO) -> int:
    inventory = nvml_inventory(nvml)
    show_inventory(inventory, out)
    uuids = [device.uuid for device in inventory.devices]
    unreadable = show_usage(nvml_usage(uuids, nvml), out)
    show_idleness(uuids, lambda ids: nvml_usage(ids, nvml), samples, interval, out)
    show_placement(inventory, out)
    broken = [gpu for gpu in inventory.gpus if not gpu.usable]
    if broken or unreadable:
        print(
            f"\ngpu-check: FAILED, {len(broken)} GPUs unusable, {unreadable} devices unreadable",
            file=out,
        )
        return 1
    print("\ngpu-check: OK", file=out)
    return 0


def main(argv: list[str] | None = None, nvml: Any = None, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3, help="utilisation samples (3)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between them (1)")
    args = parser.parse_args(argv)
    if nvml is None:
        try:
            nvml = load_pynvml()
        except ImportError:
            print(SKIP.format(why="the pynvml module is not installed"), file=out)
            return 0
    problem = driver_problem(nvml, out)
    if problem is not None:
        print(SKIP.format(why=f"no usable NVIDIA driver here: {problem}"), file=out)
        return 0
    return run(nvml, max(1, args.samples), max(0.0, args.interval), out)


if __name__ == "__main__":
    sys.exit(main())
