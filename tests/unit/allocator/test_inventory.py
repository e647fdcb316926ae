"""The inventory file format, its validation messages, and GPU-equivalent arithmetic."""

from __future__ import annotations

import math

import pytest
from alloc_helpers import EXAMPLE, G0, G1_3G, GPU0, GPU2, example_inventory

from allocator.inventory import (
    Device,
    InventoryError,
    load_inventory_file,
    parse_inventory,
)

GiB = 2**30


def test_example_inventory_has_two_mig_gpus_and_two_whole_gpus() -> None:
    """The documented example parses into 11 MIG instances and 2 whole GPUs."""
    inv = example_inventory()
    assert [g.index for g in inv.gpus] == [0, 1, 2, 3]
    assert [g.mig_enabled for g in inv.gpus] == [True, True, False, False]
    assert sum(d.is_mig for d in inv.devices) == 11
    assert [d.uuid for d in inv.devices if not d.is_mig] == [GPU2, inv.gpus[3].uuid]
    assert [d.profile for d in inv.devices_of(1)] == ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]
    assert inv.device(G1_3G).memory == 40 * GiB
    assert inv.problems == ()


def test_mig_enabled_gpu_is_not_allocatable_itself() -> None:
    """A GPU split into MIG instances is not a device; its instances are."""
    inv = example_inventory()
    assert inv.device(GPU0) is None
    assert inv.resolve("0") is None
    assert inv.resolve("2").uuid == GPU2
    assert inv.resolve(G0[3]).gi_id == 10


@pytest.mark.parametrize(
    ("slices", "gpu_slices", "expected"),
    [(1, 7, 1 / 7), (2, 7, 2 / 7), (3, 7, 3 / 7), (4, 7, 4 / 7), (7, 7, 1.0), (2, 4, 0.5)],
)
def test_gpueq_of_mig_is_its_share_of_slices(slices: int, gpu_slices: int, expected: float) -> None:
    """A MIG instance counts slices/7 GPU-equivalents (slices/4 on a 4-slice GPU)."""
    device = Device("MIG-x", "mig", 0, "GPU-x", f"{slices}g", slices, GiB, gpu_slices=gpu_slices)
    assert math.isclose(device.gpueq, expected)


def test_gpueq_adds_up_to_whole_gpus() -> None:
    """GPU 1's 3g+2g+1g+1g are exactly one GPU-equivalent, up to float tolerance."""
    inv = example_inventory()
    assert math.isclose(sum(d.gpueq for d in inv.devices_of(1)), 1.0)
    assert math.isclose(sum(d.gpueq for d in inv.devices_of(0)), 1.0)
    assert inv.resolve("3").gpueq == 1.0


def test_file_errors_name_the_file_and_key(tmp_path) -> None:
    """Errors say which file and which key is wrong."""
    path = tmp_path / "inv.yaml"
    path.write_text(
        "gpus:\n  - {index: 0, uuid: GPU-a, name: A100, memory: 80g,\n"
        "     mig: [{uuid: MIG-b, profile: 1g.10gb, slices: 9, memory: 10g}]}\n"
    )
    with pytest.raises(InventoryError) as err:
        load_inventory_file(str(path))
    assert str(err.value) == (f"{path}: gpus[0].mig[0].slices: expected an integer 1..7, got 9")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gpus: {}", "x.yaml: gpus: expected a list of GPUs"),
        ("gpu: []", "x.yaml: expected a mapping with a single key `gpus`"),
        (
            "gpus: [{index: 0, uuid: GPU-a, name: A, memory: 80q}]",
            "x.yaml: gpus[0].memory: '80q' is not a size like 32g",
        ),
        ("gpus: [{index: 0, uuid: GPU-a, name: A}]", "x.yaml: gpus[0]: missing key 'memory'"),
        (
            "gpus: [{index: 0, uuid: MIG-a, name: A, memory: 1g}]",
            "x.yaml: gpus[0].uuid: expected a UUID starting with GPU-, got 'MIG-a'",
        ),
        (
            "gpus: [{index: -1, uuid: GPU-a, name: A, memory: 1g}]",
            "x.yaml: gpus[0].index: expected an integer 0 or more, got -1",
        ),
        (
            "gpus: [{index: 0, uuid: GPU-a, name: A, memory: 1g, colour: red}]",
            "x.yaml: gpus[0]: unknown key 'colour' (expected one of index, memory, mig, name, "
            "problem, slices, usable, uuid)",
        ),
        (
            "gpus: [{index: 0, uuid: GPU-a, name: A, memory: 1g},"
            " {index: 0, uuid: GPU-b, name: A, memory: 1g}]",
            "x.yaml: GPU index 0 appears twice",
        ),
        (
            "gpus: [{index: 0, uuid: GPU-a, name: A, memory: 1g},"
            " {index: 1, uuid: GPU-a, name: A, memory: 1g}]",
            "x.yaml: UUID GPU-a appears twice",
        ),
        (
            "gpus: [{index: 0, uuid: GPU-a, name: A, memory: 1g, mig: ["
            "{uuid: MIG-a, profile: 4g, slices: 4, memory: 1g},"
            "{uuid: MIG-a, profile: 3g, slices: 3, memory: 1g}]}]",
            "x.yaml: UUID MIG-a appears twice",
        ),
        (
            "gpus: [{index: 0, uuid: GPU-a, name: A, memory: 1g, mig: ["
            "{uuid: MIG-a, profile: 4g, slices: 4, memory: 1g},"
            "{uuid: MIG-b, profile: 4g, slices: 4, memory: 1g}]}]",
            "x.yaml: gpus[0].mig: the MIG instances use 8 compute slices, the GPU has 7",
        ),
        ("gpus: [", None),
    ],
)
def test_invalid_files_are_refused(text: str, message: str | None) -> None:
    """Each invalid inventory is refused with a message naming the key."""
    with pytest.raises(InventoryError) as err:
        parse_inventory(text, "x.yaml")
    if message is not None:
        assert str(err.value) == message
    else:
        assert str(err.value).startswith("x.yaml: not valid YAML")


def test_gpu_with_problem_is_listed_but_not_allocatable() -> None:
    """A GPU marked with a problem stays in the list and is never allocated."""
    inv = parse_inventory(
        "gpus:\n  - {index: 0, uuid: GPU-a, name: A, memory: 1g, problem: fell off the bus}\n"
        "  - {index: 1, uuid: GPU-b, name: A, memory: 1g, usable: false}\n"
        "  - {index: 2, uuid: GPU-c, name: A, memory: 1g}\n"
    )
    assert [g.usable for g in inv.gpus] == [False, False, True]
    assert [d.uuid for d in inv.devices] == ["GPU-c"]
    assert inv.problems == ("GPU 0 (GPU-a): fell off the bus",)


def test_empty_file_is_an_empty_inventory() -> None:
    """An empty file means no GPUs, not an error."""
    assert parse_inventory("").devices == ()


def test_load_inventory_specs(tmp_path, monkeypatch) -> None:
    """--inventory none is empty, FILE reads the file, auto asks NVML."""
    from ds01d.host.nvml import load_inventory

    assert load_inventory("none").devices == ()
    assert len(load_inventory(str(EXAMPLE)).devices) == 13
    from fake_pynvml import FakeNvml, NVMLError_LibraryNotFound

    import ds01d.host.nvml as nvml_module

    monkeypatch.setattr(
        nvml_module, "_import_pynvml", lambda: FakeNvml([], init_error=NVMLError_LibraryNotFound)
    )
    auto = load_inventory("auto")
    assert auto.devices == ()
    assert auto.problems[0].startswith("NVML unavailable: libnvidia-ml.so.1 not found")


def test_device_descriptions_are_short() -> None:
    """Messages name devices by GPU index, profile and a short UUID."""
    inv = example_inventory()
    assert inv.device(G1_3G).describe() == "GPU 1 MIG 3g.40gb (MIG-2b3c4d5e…)"
    assert inv.device(GPU2).describe() == "GPU 2 (GPU-7c8d9e0f…)"
