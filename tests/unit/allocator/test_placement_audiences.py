"""Placement that keeps options open for others: who may use what decides which device goes."""

from __future__ import annotations

import pytest
from alloc_helpers import NOW, limits, researcher, student

from allocator.inventory import parse_inventory
from allocator.ledger import Ledger, Reservation
from allocator.placement import Audience, audiences
from allocator.quota import Quota
from allocator.request import GpuRequest
from policy.gpu_audiences import gpu_audiences
from policy.loader import parse_policy

# GPU 0 whole (40g); GPU 1 split 3g.40gb + 1g.10gb (+ 1g.10gb held in some rows); GPU 2 split
# 2g.20gb + 1g.10gb + 4 slices unused.
INVENTORY = parse_inventory(
    "gpus:\n"
    "  - {index: 0, uuid: GPU-whole, name: A100, memory: 40g}\n"
    "  - index: 1\n"
    "    uuid: GPU-split\n"
    "    name: A100\n"
    "    memory: 80g\n"
    "    mig:\n"
    "      - {uuid: MIG-3g, profile: 3g.40gb, slices: 3, memory: 40g, gi: 1}\n"
    "      - {uuid: MIG-1g-a, profile: 1g.10gb, slices: 1, memory: 10g, gi: 2}\n"
    "      - {uuid: MIG-1g-b, profile: 1g.10gb, slices: 1, memory: 10g, gi: 3}\n"
    "  - index: 2\n"
    "    uuid: GPU-other\n"
    "    name: A100\n"
    "    memory: 80g\n"
    "    mig:\n"
    "      - {uuid: MIG-2g, profile: 2g.20gb, slices: 2, memory: 20g, gi: 1}\n"
    "      - {uuid: MIG-1g-c, profile: 1g.10gb, slices: 1, memory: 10g, gi: 2}\n"
)
ALL = ["GPU-whole", "MIG-3g", "MIG-1g-a", "MIG-1g-b", "MIG-2g", "MIG-1g-c"]

ONLY_1G = student(allowed_mig_profiles=["1g.10gb"])
ANY_MIG = limits("mo", max_mig_instances=2, max_gpus_per_container=2)
MIG_RESEARCHER = researcher(max_gpus=0, allow_full_gpu=False)  # any profile, no whole GPU
FULL_RESEARCHER = researcher()  # whole GPUs and any profile
STUDENTS_1G = audiences([Quota.from_limits(ONLY_1G), Quota.from_limits(FULL_RESEARCHER)])
ANYONE_MIG = audiences([Quota.from_limits(ANY_MIG), Quota.from_limits(FULL_RESEARCHER)])


def placed(lim, request, free, others) -> tuple[str, ...]:
    """What ``lim`` gets for ``request`` when only ``free`` devices are free."""
    ledger = Ledger(INVENTORY)
    ledger.audiences = others
    for i, uuid in enumerate(u for u in ALL if u not in free):
        taken = ledger.reserve(
            f"x{i}", 1, "g", limits(admin=True), GpuRequest(device_ids=(uuid,)), NOW
        )
        assert isinstance(taken, Reservation)
    got = ledger.reserve(lim.user, 1000, lim.group, lim, request, NOW)
    assert isinstance(got, Reservation), getattr(got, "message", got)
    return got.device_ids


ONE = GpuRequest(count=1)
TWO = GpuRequest(count=2)

ROWS = [
    # The issue's scenario: a 3g.40gb and a 1g.10gb free; students may only use 1g.10gb.
    ("researcher takes the 3g, not the students' only 1g", MIG_RESEARCHER, ONE,
     ["MIG-3g", "MIG-1g-a"], STUDENTS_1G, ("MIG-3g",)),
    # Without that restriction the smallest sufficient slice wins, as before.
    ("no restriction: smallest slice", MIG_RESEARCHER, ONE,
     ["MIG-3g", "MIG-1g-a"], ANYONE_MIG, ("MIG-1g-a",)),
    # With several 1g free, the researcher may take one; smallest still wins among the rest.
    ("students keep one 1g either way: smallest", MIG_RESEARCHER, ONE,
     ["MIG-3g", "MIG-1g-a", "MIG-1g-b"], STUDENTS_1G, ("MIG-3g",)),
    # Between two instances students cannot use, the smaller one goes.
    ("of the ones students cannot use, the smaller", MIG_RESEARCHER, ONE,
     ["MIG-3g", "MIG-2g", "MIG-1g-a"], STUDENTS_1G, ("MIG-2g",)),
    # A student gets what they may use, best fit.
    ("student gets a 1g", ONLY_1G, ONE, ["MIG-3g", "MIG-1g-a", "MIG-1g-c"], STUDENTS_1G,
     ("MIG-1g-c",)),
    # A full-GPU researcher: the whole GPU, which students cannot use, before their only 1g.
    ("whole GPU before the students' only 1g", FULL_RESEARCHER, ONE,
     ["GPU-whole", "MIG-1g-a"], STUDENTS_1G, ("GPU-whole",)),
    # A whole GPU and a 3g only researchers may use: a tie, so the whole GPU goes last.
    ("whole GPU or a 3g students cannot use: the 3g", FULL_RESEARCHER, ONE,
     ["GPU-whole", "MIG-3g", "MIG-1g-a"], STUDENTS_1G, ("MIG-3g",)),
    # When everyone who may use MIG may also use whole GPUs, the whole GPU goes last.
    ("whole GPUs last when it is a tie", FULL_RESEARCHER, ONE,
     ["GPU-whole", "MIG-3g", "MIG-1g-a"], audiences([Quota.from_limits(FULL_RESEARCHER)]),
     ("MIG-1g-a",)),
    # Two devices: the students' 1g is the last thing taken.
    ("two devices spare the students' 1g", MIG_RESEARCHER, TWO,
     ["MIG-3g", "MIG-2g", "MIG-1g-a"], STUDENTS_1G, ("MIG-2g", "MIG-3g")),
    # Only the students' profile is free: a researcher still gets it (nothing is refused).
    ("only a 1g free: the researcher gets it", MIG_RESEARCHER, ONE, ["MIG-1g-a"], STUDENTS_1G,
     ("MIG-1g-a",)),
    # No audiences (no policy summary): the plain order, whole GPUs first for full-GPU users.
    ("no summary: whole GPU first", FULL_RESEARCHER, ONE, ["GPU-whole", "MIG-1g-a"], (),
     ("GPU-whole",)),
    ("no summary: smallest slice", MIG_RESEARCHER, ONE, ["MIG-3g", "MIG-1g-a"], (),
     ("MIG-1g-a",)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("lim", "request_", "free", "others", "expected"),
    [row[1:] for row in ROWS],
    ids=[row[0] for row in ROWS],
)
def test_placement_keeps_options_open(lim, request_, free, others, expected) -> None:
    assert placed(lim, request_, free, others) == expected


POLICY = """
defaults:
  max_mig_instances: 1
  allowed_mig_profiles: [1g.10gb]
groups:
  students:
    members: [alice]
  researchers:
    unix_groups: [lab-research]
    allow_full_gpu: true
    max_gpus: 2
    allowed_mig_profiles: null
  admins:
    members: [root]
    admin: true
users:
  bob: {max_mig_instances: 0}
"""


def test_policy_summary_names_each_kind_of_right_once() -> None:
    """Defaults, groups by member and by Unix group, users: entries and admins, deduplicated;
    a user who may have no GPU is no audience."""
    got = gpu_audiences(parse_policy(POLICY))
    assert got == (
        Audience(full_gpu=False, mig=True, profiles=frozenset({"1g.10gb"})),
        Audience(full_gpu=True, mig=True, profiles=None),
    )


def test_the_policy_summary_places_the_issue_scenario() -> None:
    """From a real policy: a researcher (by Unix group) takes the 3g, the 1g stays for alice."""
    others = gpu_audiences(parse_policy(POLICY))
    rita = researcher(max_gpus=0, allowed_mig_profiles=None)
    assert placed(rita, ONE, ["MIG-3g", "MIG-1g-a"], others) == ("MIG-3g",)
