"""`make gpu-check` (scripts/gpu_check.py) against the fake pynvml: what it prints and returns."""

from __future__ import annotations

import io

import pytest

from scripts import gpu_check
from tests.unit.allocator.fake_pynvml import (
    FakeNvml,
    FakeProcess,
    GiB,
    NVMLError_DriverNotLoaded,
    NVMLError_LibraryNotFound,
    example_host,
)

SETTERS = ("Set", "Create", "Destroy", "Reset", "Clear")


def check(nvml: object) -> tuple[int, str]:
    out = io.StringIO()
    code = gpu_check.main(["--samples", "2", "--interval", "0"], nvml=nvml, out=out)
    return code, out.getvalue()


def test_reports_inventory_usage_idleness_and_placement() -> None:
    """On a host with GPUs it shows every part of the NVML backend and the allocator."""
    host = example_host()
    host[3].processes = [FakeProcess(4242, 3 * GiB)]
    host[3].util = 40
    host[1].mig[0].processes = [FakeProcess(7, GiB)]
    fake = FakeNvml(host)
    code, text = check(fake)
    assert code == 0, text
    lines = text.splitlines()
    # inventory: GPUs with their MIG mode, MIG instances with profile and GPU instance
    assert "GPU 1 GPU-00000001-0000-0000-0000-000000000000 NVIDIA A100-SXM4-80GB" in text
    assert "(MIG on, 7 slices)" in text and "(whole GPU)" in text
    assert any(
        "MIG-10000000-0000-0000-0000-000000000000 on GPU 1: 3g.40gb, 3 slices, 40.0 GiB" in line
        and "GI 2" in line
        for line in lines
    )
    # per-process use, and utilisation where NVML has it (not on MIG instances)
    assert (
        "GPU-00000003-0000-0000-0000-000000000000: 1 processes, 3.0 GiB used, utilisation 40%"
        in lines
    )
    mig = "MIG-10000000-0000-0000-0000-000000000000"
    assert f"{mig}: 1 processes, 1.0 GiB used, utilisation n/a (MIG)" in lines
    assert f"{mig}: BB  -> busy" in lines  # processes decide on MIG instances
    # idleness, as the lifecycle judges it, sample by sample
    assert "GPU-00000003-0000-0000-0000-000000000000: BB  -> busy" in lines
    assert "GPU-00000002-0000-0000-0000-000000000000: ..  -> idle" in lines
    # placement: a student gets a MIG instance, nothing stays reserved
    (student,) = [line for line in lines if line.startswith("student (students) asks 1 GPU: ")]
    assert "MIG-" in student and "GPU-" not in student.split(": ", 1)[1]
    assert sum(line.startswith("researcher") for line in lines) == 3
    assert lines[-1] == "gpu-check: OK"
    assert not [c for c in fake.calls if any(s in c for s in SETTERS)]  # it only reads


def test_a_device_that_cannot_be_read_fails_the_check() -> None:
    """A lost GPU is reported unusable, and the check exits 1."""
    host = example_host()
    host[2].lost = True
    code, text = check(FakeNvml(host))
    assert code == 1
    assert "UNUSABLE" in text and "GPU is lost" in text
    assert text.splitlines()[-1].startswith("gpu-check: FAILED, 1 GPUs unusable")


@pytest.mark.parametrize("error", [NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded])
def test_no_driver_skips_with_a_clear_message(error: type[Exception]) -> None:
    """Without an NVIDIA driver it says why it skipped and succeeds."""
    code, text = check(FakeNvml(example_host(), init_error=error))
    assert code == 0
    assert text.startswith("gpu-check skipped: no usable NVIDIA driver here: NVML did not start")
    assert error.__name__ in text and "== Inventory" not in text


def test_no_pynvml_skips_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the nvidia-ml-py package it says so and succeeds."""

    def missing() -> None:
        raise ImportError("No module named 'pynvml'")

    monkeypatch.setattr(gpu_check, "load_pynvml", missing)
    out = io.StringIO()
    assert gpu_check.main([], out=out) == 0
    assert out.getvalue().startswith("gpu-check skipped: the pynvml module is not installed")
