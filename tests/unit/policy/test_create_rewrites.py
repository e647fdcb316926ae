"""Golden create rewrites: each ``*_in.json`` next to the ``*_expected.json`` dockerd receives.

To review a rewrite, read the pair. After an intended change, regenerate with
``DS01_REGENERATE=1 pytest tests/unit/policy/test_create_rewrites.py`` and read the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from policy.create import apply_allocation
from policy.engine import decide
from policy.state import State

from .conftest import ALICE, RITA, create_request

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "create"
NOW = 1_790_000_000.0
MIG = "MIG-1a2b3c4d-0000-0000-0000-000000000000"

# fixture name -> (who, devices the allocator grants)
CASES = {
    "student_plain": (ALICE, []),
    "student_gpu": (ALICE, [MIG]),
    "researcher_limits": (RITA, []),
    "devcontainer": (ALICE, []),
    "spoofing": (ALICE, []),
    # run_as: user, binds pinned to their resolved path, ports pinned to loopback, forged label
    "student_binds_ports": (ALICE, []),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_create_rewrite_matches_golden_file(name, limits_of):
    """The canonical body sent to dockerd is exactly the reviewed expected file."""
    identity, devices = CASES[name]
    body_in = json.loads((FIXTURES / f"{name}_in.json").read_text())
    decision = decide(create_request(body_in), identity, limits_of(identity), State(now=NOW))
    assert decision.allowed, decision.message
    out = apply_allocation(decision.body, devices, len(devices) / 7, NOW)
    expected_file = FIXTURES / f"{name}_expected.json"
    if os.environ.get("DS01_REGENERATE"):
        expected_file.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    assert out == json.loads(expected_file.read_text())


def test_rewrite_is_idempotent(limits_of):
    """Deciding again on an approved body changes nothing (the plugin re-check relies on it)."""
    body_in = json.loads((FIXTURES / "researcher_limits_in.json").read_text())
    first = decide(create_request(body_in), RITA, limits_of(RITA), State(now=NOW))
    again = decide(create_request(first.body), RITA, limits_of(RITA), State(now=NOW))
    assert again.allowed and again.body == first.body
