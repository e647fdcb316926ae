"""Networks are owned, as real users through the gateway: another user's network looks missing."""

from __future__ import annotations

import json

import pytest

from tests.stack.ds01 import IMAGE

pytestmark = [pytest.mark.docker, pytest.mark.e2e]

ALICE, BOB = "e2e-alice", "e2e-bob"


@pytest.fixture
def nets(clean):
    """alice-net (alice's) and bob-net (bob's), removed afterwards."""
    for user, name in ((ALICE, "alice-net"), (BOB, "bob-net")):
        made = clean.docker("network", "create", name, user=user)
        assert made.returncode == 0, made.stderr
    yield clean
    clean.remove_all_containers()
    clean.docker("network", "rm", "alice-net", "bob-net", direct=True)


def test_run_on_another_users_network_looks_missing(nets):
    result = nets.docker("run", "--rm", "--network", "alice-net", IMAGE, "true", user=BOB)
    assert result.returncode != 0
    assert "network alice-net not found" in result.stderr, result.stderr
    assert "Unable to find image" not in result.stderr  # not mistaken for a missing image


def test_run_on_own_network_works(nets):
    result = nets.docker("run", "--rm", "--network", "bob-net", IMAGE, "true", user=BOB)
    assert result.returncode == 0, result.stderr


def test_network_ls_hides_other_users_networks(nets):
    result = nets.docker("network", "ls", "--format", "{{.Name}}", user=BOB)
    assert result.returncode == 0, result.stderr
    names = result.stdout.split()
    assert "bob-net" in names and "none" in names
    assert "alice-net" not in names


def test_network_inspect_of_another_users_network_looks_missing(nets):
    result = nets.docker("network", "inspect", "alice-net", user=BOB)
    assert result.returncode != 0
    assert ("alice-net" in result.stderr and "not found" in result.stderr.lower()) or (
        "No such network" in result.stderr
    ), result.stderr
    own = nets.docker("network", "inspect", "bob-net", user=BOB)
    assert own.returncode == 0 and json.loads(own.stdout)[0]["Name"] == "bob-net"


def test_predefined_network_shows_only_own_containers(nets):
    """`none` is everyone's: bob's inspect lists his containers on it, not alice's."""
    for user in (ALICE, BOB):
        ran = nets.docker("run", "-d", "--network", "none", IMAGE, "sleep", "300", user=user)
        assert ran.returncode == 0, ran.stderr
    result = nets.docker("network", "inspect", "none", user=BOB)
    assert result.returncode == 0, result.stderr
    containers = json.loads(result.stdout)[0]["Containers"]
    owners = {
        json.loads(nets.docker("inspect", cid, direct=True).stdout)[0]["Config"]["Labels"][
            "ds01.user"
        ]
        for cid in containers
    }
    assert owners == {BOB}


def test_connect_to_another_users_network_looks_missing(nets):
    ran = nets.docker("create", "--network", "none", IMAGE, "true", user=BOB)
    assert ran.returncode == 0, ran.stderr
    result = nets.docker("network", "connect", "alice-net", ran.stdout.strip(), user=BOB)
    assert result.returncode != 0
    assert "alice-net" in result.stderr and "not found" in result.stderr, result.stderr


def test_name_conflict_does_not_show_the_holders_id(nets):
    held = nets.docker("create", "--name", "taken-name", IMAGE, "true", user=ALICE)
    assert held.returncode == 0, held.stderr
    alice_id = held.stdout.strip()
    result = nets.docker("create", "--name", "taken-name", IMAGE, "true", user=BOB)
    assert result.returncode != 0
    assert "already in use" in result.stderr, result.stderr
    assert alice_id not in result.stderr and alice_id[:12] not in result.stderr


def test_chosen_subnet_is_refused(nets):
    result = nets.docker("network", "create", "--subnet", "10.99.0.0/16", "sub-net", user=BOB)
    assert result.returncode != 0
    assert "--subnet, --ip-range, --gateway and --aux-address are chosen by dockerd" in (
        result.stderr
    ), result.stderr
