"""A stopped container's GPU hold is one computation: the stop and the periodic reconcile agree.

Both go through the daemon's ``hold_after_stop`` (the user's own hold, shortened by the
policy's ``container_types`` entry for the container's kind), so a reconcile a minute after a
stop neither lengthens nor shortens what the stop decided (issue 14, item 10).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from allocator.ledger import State
from allocator.reconcile import ContainerSummary
from formats.labels import allocation_labels
from tests.unit.daemon_helpers import make_daemon

ROOT = Path(__file__).resolve().parents[2]
POLICY = """
defaults:
  max_mig_instances: 1
  gpu_hold_after_stop: 2h
container_types:
  devcontainer:
    gpu_hold_after_stop: 30m
"""
DEVICE = "MIG-1a2b3c4d-0000-0000-0000-000000000000"  # in config/inventory.example.yaml
USER, UID = "nobody-hold", 4_242_424  # no such Unix user: the policy's defaults apply
STOPPED_AT = 1_700_000_000.0
DEVCONTAINER = {"devcontainer.local_folder": "/home/x/proj"}


@pytest.fixture
def daemon(tmp_path):
    d = make_daemon(tmp_path, POLICY, str(ROOT / "config" / "inventory.example.yaml"))
    yield d
    d.audit.close()


def summary(state: str, kind_labels: dict[str, str]) -> ContainerSummary:
    labels = allocation_labels(
        user=USER, uid=UID, group="default", devices=[DEVICE], gpueq=1 / 7, at=STOPPED_AT - 600
    )
    return ContainerSummary(
        "c" * 64,
        {**labels, **kind_labels},
        state,
        STOPPED_AT if state == "exited" else None,
        gpu_devices=(DEVICE,),
    )


@pytest.mark.parametrize(
    ("kind_labels", "hold"),
    [(DEVCONTAINER, 30 * 60), ({}, 2 * 3600)],
    ids=["devcontainer: 30m, not the user's 2h", "plain container: the user's 2h"],
)
def test_a_reconcile_after_a_stop_keeps_the_stops_hold(daemon, kind_labels, hold) -> None:
    broker = daemon.broker
    broker.rebuild([summary("running", kind_labels)], STOPPED_AT - 60)
    broker.container_died("c" * 64, STOPPED_AT, kind_labels)
    at_stop = broker.ledger.allocation_of("c" * 64)
    assert at_stop.state is State.HELD and at_stop.hold_until == STOPPED_AT + hold
    # The periodic reconcile a minute later, from Docker's listing: the same hold.
    broker.rebuild([summary("exited", kind_labels)], STOPPED_AT + 60)
    again = broker.ledger.allocation_of("c" * 64)
    assert again is not None and again.state is State.HELD
    assert again.hold_until == STOPPED_AT + hold
    broker.tick(STOPPED_AT + hold - 1)
    assert broker.ledger.holder_of(DEVICE) is not None
    broker.tick(STOPPED_AT + hold)
    assert broker.ledger.holder_of(DEVICE) is None
