"""Build query rules: golden rewrites (``tests/fixtures/build``) and one row per refusal.

Each fixture holds the query a client sent and the canonical query dockerd receives. After an
intended change, regenerate with ``DS01_REGENERATE=1 pytest tests/unit/policy/test_builds.py``
and read the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlencode

import pytest

from policy.engine import decide
from policy.images import OWNERS_KEY, owners_facts
from policy.state import ObjectFacts, Request, State

from .conftest import ALICE, BOB, RITA, ROOT

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "build"
WHO = {"alice": ALICE, "bob": BOB, "rita": RITA, "root": ROOT}
ALICE_NET = ObjectFacts(
    kind="network", id="a1" * 32, owner="alice", name="alice-net", labels={"ds01.user": "alice"}
)
BOB_NET = ObjectFacts(
    kind="network", id="b0" * 32, owner="bob", name="bob-net", labels={"ds01.user": "bob"}
)
NETWORKS = State(
    cgroup_driver="cgroupfs",
    related={"network:alice-net": ALICE_NET, "network:bob-net": BOB_NET},
)


def build(query: str, version_prefix: str = "/v1.41") -> Request:
    return Request("POST", f"{version_prefix}/build?{query}", {"Content-Type": "application/x-tar"})


@pytest.mark.parametrize("name", sorted(p.stem for p in FIXTURES.glob("*.json")))
def test_build_query_rewrite_matches_golden_file(name, limits_of):
    """The query dockerd receives is exactly the reviewed one, in canonical order."""
    path = FIXTURES / f"{name}.json"
    case = json.loads(path.read_text())
    identity = WHO[case["user"]]
    decision = decide(build(case["query"]), identity, limits_of(identity), NETWORKS)
    assert decision.allowed, decision.message
    if os.environ.get("DS01_REGENERATE"):
        case["expected"] = decision.query
        case["expected_target"] = "/v1.41/build?" + urlencode(decision.query, doseq=True)
        path.write_text(json.dumps(case, indent=2) + "\n")
    assert decision.query == case["expected"]
    assert list(decision.query) == list(case["expected"])  # the order is canonical too


def test_rewrite_is_idempotent(limits_of):
    """Deciding again on the rewritten query changes nothing (the plugin sees the same)."""
    case = json.loads((FIXTURES / "student_legacy_cli.json").read_text())
    first = decide(build(case["query"]), ALICE, limits_of(ALICE), NETWORKS)
    again_query = urlencode(first.query, doseq=True)
    again = decide(build(again_query), ALICE, limits_of(ALICE), NETWORKS)
    assert again.allowed and again.query == first.query


# (row id, query, exact message)
REFUSALS = [
    (
        "network_host",
        "networkmode=host",
        "ds01: docker build --network host is not allowed (RUN steps would share the host's "
        "network). To fix: drop --network host; builds reach the network through the default "
        "network",
    ),
    (
        "network_host_buildkit",
        "version=2&networkmode=host&session=x",
        "ds01: docker build --network host is not allowed (RUN steps would share the host's "
        "network). To fix: drop --network host; builds reach the network through the default "
        "network",
    ),
    (
        "network_container",
        "networkmode=container:" + "c0" * 32,
        "ds01: docker build --network container:"
        + "c0" * 32
        + " is not allowed (RUN steps would join that container's network namespace). "
        "To fix: drop --network container:..., or use a network of your own",
    ),
    (
        "network_first_value_host",
        "networkmode=host&networkmode=default",
        "ds01: docker build --network host is not allowed (RUN steps would share the host's "
        "network). To fix: drop --network host; builds reach the network through the default "
        "network",
    ),
    ("network_of_another_user", "networkmode=bob-net", "network bob-net not found"),
    ("network_missing", "networkmode=nonexist", "network nonexist not found"),
    (
        "cgroup_parent",
        "cgroupparent=%2Fds01%2Fbob",
        "ds01: docker build --cgroup-parent is chosen by DS01 (your builds run in your own "
        "cgroup). To fix: drop --cgroup-parent",
    ),
    (
        "cgroup_parent_root",
        "cgroupparent=%2F",
        "ds01: docker build --cgroup-parent is chosen by DS01 (your builds run in your own "
        "cgroup). To fix: drop --cgroup-parent",
    ),
    (
        "memory_over",
        "memory=34359738368",
        "ds01: docker build --memory 32g is over the per-container limit of 16g for "
        "group students. To fix: ask for at most --memory 16g",
    ),
    (
        "memory_unlimited",
        "memory=-1",
        "ds01: docker build --memory -1 (negative: unlimited) is not allowed. To fix: drop "
        "--memory or give a positive value",
    ),
    (
        "memory_not_a_number",
        "memory=1g",
        "ds01: docker build --memory '1g' is not a whole number. To fix: fix --memory",
    ),
    (
        "memswap_unlimited",
        "memswap=-1",
        "ds01: docker build --memory-swap -1 (negative: unlimited) is not allowed. To fix: drop "
        "--memory-swap or give a positive value",
    ),
    (
        "memswap_more",
        "memory=1024&memswap=4096",
        "ds01: docker build --memory-swap is not allowed: builds get no swap beyond --memory. "
        "To fix: drop --memory-swap",
    ),
    (
        "cpuquota_over",
        "cpuquota=500000",
        "ds01: docker build --cpu-quota 500000 (period 100000) is 5 CPUs, over the "
        "per-container limit of 4 CPUs for group students. To fix: ask for at most 4 CPUs "
        "(--cpu-quota 400000)",
    ),
    (
        "cpuquota_unlimited",
        "cpuquota=-1",
        "ds01: docker build --cpu-quota -1 (negative: unlimited) is not allowed. To fix: drop "
        "--cpu-quota or give a positive value",
    ),
    (
        "cpuperiod_small_stretches_quota",
        "cpuperiod=1000&cpuquota=100000",
        "ds01: docker build --cpu-quota 100000 (period 1000) is 100 CPUs, over the "
        "per-container limit of 4 CPUs for group students. To fix: ask for at most 4 CPUs "
        "(--cpu-quota 4000)",
    ),
    (
        "cpushares_negative",
        "cpushares=-5",
        "ds01: docker build --cpu-shares -5 (negative: unlimited) is not allowed. To fix: drop "
        "--cpu-shares or give a positive value",
    ),
    (
        "shm_over",
        "shmsize=4294967296",
        "ds01: docker build --shm-size 4g is over the per-container limit of 2g for "
        "group students. To fix: ask for at most --shm-size 2g",
    ),
    (
        "extra_hosts",
        "extrahosts=evil%3A10.0.0.1",
        "ds01: docker build --add-host is not allowed for group students. To fix: drop "
        "--add-host; add entries inside the Dockerfile's RUN step if needed",
    ),
    (
        "ulimits",
        "ulimits=%5B%7B%22Name%22%3A%22memlock%22%2C%22Soft%22%3A-1%2C%22Hard%22%3A-1%7D%5D",
        "ds01: docker build --ulimit is not allowed for group students. To fix: drop --ulimit; "
        "builds get dockerd's default limits",
    ),
    (
        "isolation",
        "isolation=hyperv",
        "ds01: docker build --isolation hyperv is not supported. To fix: drop it",
    ),
    (
        "security_opt",
        "securityopt=seccomp%3Dunconfined",
        "ds01: docker build --security-opt is not allowed. To fix: drop it",
    ),
    (
        "output_image_push",
        "version=2&outputs=%5B%7B%22Type%22%3A%22image%22%2C%22Attrs%22%3A%7B%22push%22%3A%22true%22%7D%7D%5D",
        "ds01: docker build --output type=image is not allowed. To fix: export with --output "
        "type=local,dest=DIR or type=tar, or build an image",
    ),
    ("bad_version", "version=3", "ds01: unknown builder version '3'. To fix: use docker build"),
    (
        "remote_git_ssh",  # cloned with root's SSH keys
        "remote=git%40internal.example%3Asecret%2Frepo.git",
        "ds01: building from a remote context (a URL or git repository) is not allowed: "
        "dockerd would fetch it as root, with root's credentials. To fix: fetch it yourself "
        "(git clone URL dir, or curl), then docker build dir",
    ),
    (
        "remote_https_git",
        "remote=https%3A%2F%2Fgit.example%2Frepo.git%23main",
        "ds01: building from a remote context (a URL or git repository) is not allowed: "
        "dockerd would fetch it as root, with root's credentials. To fix: fetch it yourself "
        "(git clone URL dir, or curl), then docker build dir",
    ),
    (
        "remote_url",
        "remote=http%3A%2F%2F127.0.0.1%3A9401%2Fctx.tar",
        "ds01: building from a remote context (a URL or git repository) is not allowed: "
        "dockerd would fetch it as root, with root's credentials. To fix: fetch it yourself "
        "(git clone URL dir, or curl), then docker build dir",
    ),
]


@pytest.mark.parametrize("row", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_build_refusal(row, limits_of):
    _, query, message = row
    decision = decide(build(query), ALICE, limits_of(ALICE), NETWORKS)
    assert not decision.allowed
    assert decision.message == message


def test_own_network_allowed_for_buildkit_by_name(limits_of):
    decision = decide(build("version=2&networkmode=alice-net"), ALICE, limits_of(ALICE), NETWORKS)
    assert decision.allowed and decision.query["networkmode"] == ["alice-net"]


def test_cgroup_parent_systemd(limits_of):
    state = State(cgroup_driver="systemd")
    decision = decide(build("version=1"), ALICE, limits_of(ALICE), state)
    assert decision.query["cgroupparent"] == ["ds01-students-alice.slice"]


def test_grpc_refused_for_users_allowed_for_admins(limits_of):
    request = Request("POST", "/v1.41/grpc", {"Upgrade": "h2c", "Connection": "Upgrade"})
    decision = decide(request, ALICE, limits_of(ALICE), State())
    assert decision.message == (
        "ds01: BuildKit's direct API (docker buildx with the docker driver, POST /grpc) is for "
        "admins only. To fix: use docker build with DOCKER_BUILDKIT=1 (or DOCKER_BUILDKIT=0) "
        "instead"
    )
    assert decide(request, ROOT, limits_of(ROOT), State()).allowed


def test_session_allowed(limits_of):
    request = Request("POST", "/v1.41/session", {"Upgrade": "h2c", "Connection": "Upgrade"})
    assert decide(request, ALICE, limits_of(ALICE), State()).allowed


def test_build_tag_of_another_user_is_refused(limits_of):
    """`docker build -t bob/model` by alice would overwrite bob's image (policy.images rule)."""
    owners = owners_facts({"docker.io/bob/model:latest": "bob"}, {})
    state = State(related={**NETWORKS.related, OWNERS_KEY: owners})
    decision = decide(build("t=bob%2Fmodel&version=1"), ALICE, limits_of(ALICE), state)
    assert not decision.allowed
    assert decision.code == "image_tag_taken", decision.message
    own = decide(build("t=alice%2Fmodel&version=1"), ALICE, limits_of(ALICE), state)
    assert own.allowed, own.message
