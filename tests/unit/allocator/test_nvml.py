"""The NVML backend against a fake pynvml that reproduces the real module's API and errors."""

from __future__ import annotations

import math

import pytest
from fake_pynvml import (
    FakeGpu,
    FakeMig,
    FakeNvml,
    FakeProcess,
    GiB,
    NVMLError,
    NVMLError_DriverNotLoaded,
    NVMLError_GpuIsLost,
    NVMLError_LibraryNotFound,
    NVMLError_NotFound,
    NVMLError_NotSupported,
    NVMLError_Uninitialized,
    NVMLError_Unknown,
    example_host,
)

from ds01d.host.nvml import nvml_inventory, nvml_processes, nvml_usage

# Calls that change GPU state; the backend must never make one.
SETTERS = ("Set", "Create", "Destroy", "Reset", "Clear")


def test_fake_behaves_like_pynvml() -> None:
    """The fake's errors and behaviours match pynvml's (the contract the backend relies on)."""
    fake = FakeNvml(example_host())
    with pytest.raises(NVMLError_Uninitialized):
        fake.nvmlDeviceGetCount()  # before nvmlInit
    assert type(NVMLError(6)) is NVMLError_NotFound  # code -> subclass, as in pynvml
    assert issubclass(NVMLError_NotFound, NVMLError)
    assert str(NVMLError_NotSupported()) == "Not Supported"
    fake.nvmlInit()
    mig_gpu = fake.nvmlDeviceGetHandleByIndex(1)
    with pytest.raises(NVMLError_NotFound):
        fake.nvmlDeviceGetMigDeviceHandleByIndex(mig_gpu, 6)  # an empty slot
    whole = fake.nvmlDeviceGetHandleByIndex(3)
    with pytest.raises(NVMLError_NotSupported):
        fake.nvmlDeviceGetMigMode(whole)
    mig = fake.nvmlDeviceGetMigDeviceHandleByIndex(mig_gpu, 0)
    assert fake.nvmlDeviceGetName(mig) == "NVIDIA A100-SXM4-80GB MIG 3g.40gb"
    with pytest.raises(NVMLError_NotSupported):
        fake.nvmlDeviceGetUtilizationRates(mig)
    fake.nvmlShutdown()
    with pytest.raises(NVMLError_Uninitialized):
        fake.nvmlDeviceGetCount()  # after nvmlShutdown


def test_reads_example_host() -> None:
    """Two MIG-enabled A100s, one MIG-capable GPU in whole mode, one without MIG support."""
    fake = FakeNvml(example_host())
    inv = nvml_inventory(fake)
    assert inv.problems == ()
    assert [g.mig_enabled for g in inv.gpus] == [True, True, False, False]
    assert [g.name for g in inv.gpus] == ["NVIDIA A100-SXM4-80GB"] * 3 + ["NVIDIA L40S"]
    mig = [d for d in inv.devices if d.is_mig]
    assert len(mig) == 11
    gpu1 = inv.devices_of(1)
    assert [(d.profile, d.slices, d.gi_id, d.memory) for d in gpu1] == [
        ("3g.40gb", 3, 2, 40 * GiB),
        ("2g.20gb", 2, 3, 20 * GiB),
        ("1g.10gb", 1, 9, 10 * GiB),
        ("1g.10gb", 1, 10, 10 * GiB),
    ]
    assert math.isclose(sum(d.gpueq for d in gpu1), 1.0)
    assert [d.kind for d in inv.devices_of(2)] == ["gpu"]
    assert inv.devices_of(3)[0].memory == 48 * GiB
    assert inv.source == "nvml"


def test_is_read_only_and_shuts_down() -> None:
    """No call changes the GPUs, and every nvmlInit is paired with nvmlShutdown."""
    fake = FakeNvml(example_host())
    nvml_inventory(fake)
    assert not [c for c in fake.calls if any(word in c for word in SETTERS)]
    assert fake.calls.count("nvmlInit") == fake.calls.count("nvmlShutdown") == 1
    assert fake.initialised == 0


def test_profile_comes_from_the_driver_not_a_table() -> None:
    """An unfamiliar profile name (H200, compute-instance split) is taken as reported."""
    gpu = FakeGpu(
        "GPU-h",
        name="NVIDIA H200",
        memory=141 * GiB,
        mig=[
            FakeMig("MIG-a", "1g.18gb", gi=9, slices=1, memory=18 * GiB),
            FakeMig("MIG-b", "1c.3g.71gb", gi=1, slices=1, memory=71 * GiB, gi_slices=3),
            FakeMig("MIG-c", "2c.3g.71gb", gi=1, slices=2, memory=71 * GiB, gi_slices=3),
        ],
    )
    inv = nvml_inventory(FakeNvml([gpu]))
    assert [(d.profile, d.slices) for d in inv.devices] == [
        ("1c.3g.71gb", 1),
        ("2c.3g.71gb", 2),
        ("1g.18gb", 1),
    ]


def test_slices_fall_back_to_the_profile_name() -> None:
    """Without nvmlDeviceGetAttributes (old driver), slices come from the profile's name."""
    gpu = FakeGpu(
        "GPU-a",
        mig=[
            FakeMig("MIG-a", "3g.40gb", 1, 3, 40 * GiB, no_attributes=True),
            FakeMig("MIG-b", "1c.2g.20gb", 2, 1, 20 * GiB, no_attributes=True),
        ],
    )
    inv = nvml_inventory(FakeNvml([gpu]))
    assert [d.slices for d in inv.devices] == [3, 1]


def test_a30_has_four_slices() -> None:
    """The MIG denominator is the GPU's own slice count (4 on an A30), not a constant 7."""
    gpu = FakeGpu(
        "GPU-a30",
        name="NVIDIA A30",
        memory=24 * GiB,
        slices=4,
        max_mig=4,
        mig=[FakeMig("MIG-a", "2g.12gb", 1, 2, 12 * GiB)],
    )
    inv = nvml_inventory(FakeNvml([gpu]))
    assert inv.gpus[0].slices == 4
    assert inv.devices[0].gpueq == 0.5


def test_empty_slots_are_skipped() -> None:
    """MIG slots NVML answers NotFound for are empty, not errors."""
    gpu = FakeGpu("GPU-a", mig=[FakeMig("MIG-a", "1g.10gb", 7, 1, 10 * GiB, slot=4)])
    inv = nvml_inventory(FakeNvml([gpu]))
    assert [d.uuid for d in inv.devices] == ["MIG-a"]
    assert inv.problems == ()


def test_mig_mode_without_instances_is_reported() -> None:
    """A GPU in MIG mode with no instances gives nothing to allocate and a problem line."""
    gpu = FakeGpu("GPU-a", mig=[], mig_mode=(1, 1))
    inv = nvml_inventory(FakeNvml([gpu]))
    assert inv.devices == ()
    assert "is in MIG mode but has no MIG instances" in inv.problems[0]


def test_pending_mig_change_is_reported_and_current_mode_used() -> None:
    """A pending MIG mode change is noted; the current mode decides."""
    gpu = FakeGpu("GPU-a", mig=[FakeMig("MIG-a", "7g.80gb", 0, 7, 80 * GiB)], mig_mode=(0, 1))
    inv = nvml_inventory(FakeNvml([gpu]))
    assert [d.uuid for d in inv.devices] == ["GPU-a"]
    assert inv.problems == ("GPU 0: a MIG mode change is pending until the GPU is reset",)


@pytest.mark.parametrize(
    ("error", "text"),
    [
        (NVMLError_LibraryNotFound, "NVML unavailable: libnvidia-ml.so.1 not found"),
        (NVMLError_DriverNotLoaded, "NVML failed to start: Driver Not Loaded"),
    ],
)
def test_no_driver_gives_empty_inventory_with_problem(error: type[NVMLError], text: str) -> None:
    """Without a driver the inventory is empty and says why; nothing is raised."""
    inv = nvml_inventory(FakeNvml(example_host(), init_error=error))
    assert inv.devices == ()
    assert inv.problems[0].startswith(text)


def test_missing_module_gives_empty_inventory(monkeypatch) -> None:
    """Without nvidia-ml-py installed, the inventory says so."""
    import ds01d.host.nvml as backend

    def missing() -> None:
        raise ImportError("No module named 'pynvml'")

    monkeypatch.setattr(backend, "_import_pynvml", missing)
    inv = nvml_inventory()
    assert inv.devices == ()
    assert "package nvidia-ml-py" in inv.problems[0]
    assert nvml_usage(["GPU-a"])["GPU-a"].problem == inv.problems[0]


def test_lost_gpu_is_unusable_and_others_still_work() -> None:
    """A lost GPU is listed as unusable with a problem line; the rest are allocatable."""
    gpus = example_host()
    gpus[2].lost = True
    inv = nvml_inventory(FakeNvml(gpus))
    assert [g.usable for g in inv.gpus] == [True, True, False, True]
    assert inv.gpus[2].problem == "GPU is lost (NVMLError_GpuIsLost)"
    assert inv.problems == ("GPU 2: GPU is lost (NVMLError_GpuIsLost); DS01 does not allocate it",)
    assert len(inv.devices) == 12


@pytest.mark.parametrize(
    ("call", "error"),
    [
        ("nvmlDeviceGetMemoryInfo", NVMLError_Unknown),
        ("nvmlDeviceGetMigDeviceHandleByIndex", NVMLError_GpuIsLost),
        ("nvmlDeviceGetGpuInstanceId", NVMLError_Unknown),
        ("nvmlDeviceGetMaxMigDeviceCount", NVMLError_NotSupported),
    ],
)
def test_errors_while_reading_a_gpu_make_it_unusable(call: str, error: type[NVMLError]) -> None:
    """Any NVML error while reading a GPU marks that GPU unusable, named in a problem line."""
    gpus = example_host()
    gpus[1].fail[call] = error
    inv = nvml_inventory(FakeNvml(gpus))
    assert not inv.gpus[1].usable
    assert inv.devices_of(1) == ()
    assert inv.problems[0].startswith(f"GPU 1 ({gpus[1].uuid}): ")
    assert error.__name__ in inv.problems[0]
    assert len(inv.devices_of(0)) == 7


def test_gpu_uuid_unknown_when_handle_fails() -> None:
    """When even the handle cannot be had, the GPU is listed by index only."""
    gpus = example_host()
    gpus[0].fail["nvmlDeviceGetHandleByIndex"] = NVMLError_GpuIsLost
    inv = nvml_inventory(FakeNvml(gpus))
    assert inv.gpus[0].uuid == ""
    assert inv.problems[0] == "GPU 0: GPU is lost (NVMLError_GpuIsLost); DS01 does not allocate it"


def test_usage_reports_processes_memory_and_utilisation() -> None:
    """Process count and memory per device; utilisation only where NVML reports it."""
    gpus = example_host()
    gpus[1].mig[0].processes = [FakeProcess(10, 2 * GiB), FakeProcess(11, None)]
    gpus[3].processes = [FakeProcess(12, GiB)]
    gpus[3].util = 87
    fake = FakeNvml(gpus)
    mig = gpus[1].mig[0].uuid
    usage = nvml_usage([mig, gpus[3].uuid, gpus[2].uuid, "MIG-gone"], fake)
    assert (usage[mig].processes, usage[mig].used_memory, usage[mig].gpu_util) == (2, 2 * GiB, None)
    assert usage[mig].busy is True
    assert (usage[gpus[3].uuid].processes, usage[gpus[3].uuid].gpu_util) == (1, 87)
    assert usage[gpus[2].uuid].busy is False
    assert usage["MIG-gone"].busy is None
    assert usage["MIG-gone"].problem == "NVML cannot read MIG-gone: Not Found (NVMLError_NotFound)"
    assert fake.initialised == 0
    assert nvml_processes(fake, mig).processes == 2


def test_usage_of_lost_gpu_is_unknown_not_idle() -> None:
    """A GPU NVML cannot read is 'unknown', so the lifecycle never calls it idle."""
    gpus = example_host()
    gpus[3].lost = True
    usage = nvml_processes(FakeNvml(gpus), gpus[3].uuid)
    assert usage.busy is None
    assert "GPU is lost" in usage.problem


def test_fake_matches_the_real_pynvml_surface() -> None:
    """Every name the fake offers exists in nvidia-ml-py's pynvml, with the same error codes."""
    pynvml = pytest.importorskip("pynvml")
    names = [n for n in dir(FakeNvml) if n.startswith(("nvml", "NVMLError", "NVML_"))]
    for name in names:
        assert hasattr(pynvml, name), name
        if name.startswith("NVMLError_"):
            real, fake = getattr(pynvml, name), getattr(FakeNvml, name)
            assert issubclass(real, pynvml.NVMLError)
            assert real().value == fake().value, name
        elif name.startswith("NVML_"):
            assert getattr(pynvml, name) == getattr(FakeNvml, name), name
    assert pynvml.c_nvmlDeviceAttributes.__name__  # the struct the fake imitates
    fields = {f[0] for f in pynvml.c_nvmlDeviceAttributes._fields_}
    assert {"gpuInstanceSliceCount", "computeInstanceSliceCount"} <= fields
