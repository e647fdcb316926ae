"""Reading GPU requests: Docker CLI ``--gpus`` forms -> the DeviceRequests JSON -> GpuRequest."""

from __future__ import annotations

from typing import Any

import pytest

from allocator.request import (
    GpuRequest,
    GpuRequestError,
    device_requests_for,
    parse_gpu_request,
    visible_devices,
)

MIG = "MIG-1a2b3c4d-0000-0000-0000-000000000000"
GPU = "GPU-5f6c0d2e-0000-0000-0000-000000000000"

# (what the user typed, what the Docker CLI / Compose / SDK sends, what DS01 reads)
TABLE: list[tuple[str, Any, GpuRequest | None]] = [
    ("docker run (no --gpus)", None, None),
    ("SDK: DeviceRequests []", [], None),
    (
        "--gpus 1",
        [{"Driver": "", "Count": 1, "DeviceIDs": None, "Capabilities": [["gpu"]], "Options": {}}],
        GpuRequest(count=1),
    ),
    (
        "--gpus 2",
        [{"Driver": "", "Count": 2, "DeviceIDs": None, "Capabilities": [["gpu"]], "Options": {}}],
        GpuRequest(count=2),
    ),
    (
        "--gpus all",
        [{"Driver": "", "Count": -1, "DeviceIDs": None, "Capabilities": [["gpu"]], "Options": {}}],
        GpuRequest(all=True),
    ),
    (
        "--gpus '\"device=0,2\"'",
        [
            {
                "Driver": "",
                "Count": 0,
                "DeviceIDs": ["0", "2"],
                "Capabilities": [["gpu"]],
                "Options": {},
            }
        ],
        GpuRequest(device_ids=("0", "2")),
    ),
    (
        f"--gpus device={MIG}",
        [{"Driver": "", "Count": 0, "DeviceIDs": [MIG], "Capabilities": [["gpu"]], "Options": {}}],
        GpuRequest(device_ids=(MIG,)),
    ),
    (
        f"--gpus device={GPU}",
        [{"Driver": "", "Count": 0, "DeviceIDs": [GPU], "Capabilities": [["gpu"]], "Options": {}}],
        GpuRequest(device_ids=(GPU,)),
    ),
    (
        "--gpus '\"capabilities=compute,utility\",count=1'",
        [
            {
                "Driver": "",
                "Count": 1,
                "DeviceIDs": None,
                "Capabilities": [["compute", "utility", "gpu"]],
                "Options": {},
            }
        ],
        GpuRequest(count=1, capabilities=("compute", "utility")),
    ),
    (
        "--gpus driver=nvidia,count=1",
        [
            {
                "Driver": "nvidia",
                "Count": 1,
                "DeviceIDs": None,
                "Capabilities": [["gpu"]],
                "Options": {},
            }
        ],
        GpuRequest(count=1),
    ),
    (
        "compose: driver nvidia, count 1, capabilities [gpu]",
        [{"Driver": "nvidia", "Count": 1, "Capabilities": [["gpu"]]}],
        GpuRequest(count=1),
    ),
    (
        "compose: driver nvidia, count all",
        [{"Driver": "nvidia", "Count": -1, "Capabilities": [["gpu"]]}],
        GpuRequest(all=True),
    ),
    (
        "SDK: driver nvidia, no capabilities",
        [{"Driver": "nvidia", "Count": 1}],
        GpuRequest(count=1),
    ),
    (
        "SDK: Options it does not need",
        [{"Count": 1, "Capabilities": [["gpu"]], "Options": {"gpu": "true"}}],
        GpuRequest(count=1),
    ),
    (
        "--gpus 0 (no devices)",
        [{"Driver": "", "Count": 0, "DeviceIDs": None, "Capabilities": [["gpu"]], "Options": {}}],
        None,
    ),
]


@pytest.mark.parametrize(("typed", "body", "expected"), TABLE, ids=[t[0] for t in TABLE])
def test_cli_forms(typed: str, body: Any, expected: GpuRequest | None) -> None:
    """Each way of asking for GPUs is read as the request it means."""
    assert parse_gpu_request(body) == expected


REFUSED = [
    (
        "several requests",
        [{"Count": 1, "Capabilities": [["gpu"]]}] * 2,
        "2 device requests in one container; DS01 handles one",
    ),
    (
        "AMD driver",
        [{"Driver": "amd", "Count": 1, "Capabilities": [["gpu"]]}],
        "device driver 'amd' is not supported; DS01 allocates NVIDIA GPUs",
    ),
    (
        "CDI driver",
        [{"Driver": "cdi", "DeviceIDs": ["nvidia.com/gpu=0"]}],
        "device driver 'cdi' is not supported; DS01 allocates NVIDIA GPUs",
    ),
    (
        "foreign capability",
        [{"Count": 1, "Capabilities": [["tpu"]]}],
        "device capability 'tpu' is not an NVIDIA GPU capability",
    ),
    (
        "two capability sets",
        [{"Count": 1, "Capabilities": [["gpu"], ["compute"]]}],
        'the device request\'s Capabilities must be one list, e.g. [["gpu"]]',
    ),
    (
        "no driver, no capability",
        [{"Count": 1}],
        "a device request without a driver must ask for capability gpu",
    ),
    (
        "count and devices",
        [{"Count": 1, "DeviceIDs": ["0"], "Capabilities": [["gpu"]]}],
        "the GPU request sets both a count and device IDs",
    ),
    (
        "bad count",
        [{"Count": "1", "Capabilities": [["gpu"]]}],
        "GPU count '1' is not a number of GPUs (or -1 for all)",
    ),
    (
        "negative count",
        [{"Count": -2, "Capabilities": [["gpu"]]}],
        "GPU count -2 is not a number of GPUs (or -1 for all)",
    ),
    (
        "device by MIG index",
        [{"DeviceIDs": ["0:1"], "Capabilities": [["gpu"]]}],
        "device '0:1' is not a GPU index or a GPU-/MIG- UUID",
    ),
    (
        "same device twice",
        [{"DeviceIDs": ["0", "0"], "Capabilities": [["gpu"]]}],
        "the same device is named twice in the GPU request",
    ),
    (
        "unknown field",
        [{"Count": 1, "Capabilities": [["gpu"]], "Shared": True}],
        "unknown field 'Shared' in the device request",
    ),
    ("not a list", {"Count": 1}, "HostConfig.DeviceRequests must be a list"),
]


@pytest.mark.parametrize(("case", "body", "reason"), REFUSED, ids=[r[0] for r in REFUSED])
def test_uninterpretable_requests_are_refused(case: str, body: Any, reason: str) -> None:
    """What DS01 cannot interpret is refused with a reason and a fix (fail closed)."""
    with pytest.raises(GpuRequestError) as err:
        parse_gpu_request(body)
    assert err.value.reason == reason
    assert err.value.fix


def test_rewrite_names_exactly_the_granted_devices() -> None:
    """The forwarded request names the granted UUIDs and keeps asked driver capabilities."""
    request = GpuRequest(count=1, capabilities=("utility",))
    assert device_requests_for([MIG], request) == [
        {"Driver": "nvidia", "DeviceIDs": [MIG], "Capabilities": [["gpu", "utility"]]}
    ]
    assert device_requests_for([], request) == []
    assert visible_devices([MIG, GPU]) == f"{MIG},{GPU}"
    assert visible_devices([]) == "void"


def test_describe() -> None:
    """Requests read naturally in messages."""
    assert GpuRequest(count=1).describe() == "1 GPU"
    assert GpuRequest(count=2).describe() == "2 GPUs"
    assert GpuRequest(all=True).describe() == "all GPUs your policy allows"
    assert GpuRequest(device_ids=("0", "2")).describe() == "devices 0, 2"
