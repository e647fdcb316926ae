"""Per-container limits: defaults when unset, caps when asked above, the host's size respected."""

from __future__ import annotations

from policy.engine import decide
from policy.state import State

from .conftest import ALICE, RITA, cli_create_body, create_request


def host_config(limits_of, who, state: State, **asked) -> dict:
    decision = decide(create_request(cli_create_body(**asked)), who, limits_of(who), state)
    assert decision.allowed, decision.message
    return decision.body["HostConfig"]


def test_default_cpus_never_exceed_the_host(limits_of):
    """A researcher's 16-CPU default becomes the host's 2 CPUs (dockerd refuses more)."""
    assert host_config(limits_of, RITA, State(host_cpus=2))["NanoCpus"] == 2 * 10**9
    assert host_config(limits_of, RITA, State(host_cpus=64))["NanoCpus"] == 16 * 10**9


def test_asked_values_within_the_cap_are_kept(limits_of):
    """What the user asked for, within their limits, reaches dockerd unchanged."""
    host = host_config(limits_of, ALICE, State(), Memory=2**30, NanoCpus=10**9, PidsLimit=100)
    assert (host["Memory"], host["NanoCpus"], host["PidsLimit"]) == (2**30, 10**9, 100)
    assert host["MemorySwap"] == 2**30  # no swap beyond the memory limit


def test_unlimited_requests_get_the_policy_value(limits_of):
    """-1 (unlimited) for pids is replaced by the per-container limit."""
    assert host_config(limits_of, ALICE, State(), PidsLimit=-1)["PidsLimit"] == 2048


def test_cpus_never_exceed_the_users_aggregate():
    """A container may not ask for more CPUs than all the user's containers together may use."""
    from policy.limits import resolve
    from policy.loader import parse_policy

    doc = parse_policy("defaults:\n  max_cpus: 4\n  aggregate: {cpus: 1}\n")
    limits = resolve(doc, ALICE)
    refused = decide(create_request(cli_create_body(NanoCpus=2 * 10**9)), ALICE, limits, State())
    assert not refused.allowed and refused.code == "max_cpus"
    assert "--cpus 2 is over the per-container limit of 1 CPUs" in refused.message
    default = decide(create_request(cli_create_body()), ALICE, limits, State(host_cpus=8))
    assert default.body["HostConfig"]["NanoCpus"] == 10**9
