"""Lists screened by verified owner (ds01d/container_owners.py), on the in-memory dockerd."""

from __future__ import annotations

import asyncio
from typing import Any

from ds01d.container_owners import ContainerOwners
from tests.unit.fake_docker import FakeDockerApi


async def _create(docker: FakeDockerApi, labels: dict[str, str], parent: str = "") -> str:
    body: dict[str, Any] = {"Image": "busybox", "Labels": labels}
    if parent:
        body["HostConfig"] = {"CgroupParent": parent}
    return (await docker.request("POST", "/containers/create", body=body))["Id"]


async def _listed(docker: FakeDockerApi, user: str) -> list[dict[str, Any]]:
    return await docker.list_containers({"label": [f"ds01.user={user}"]})


async def _settle(owners: ContainerOwners) -> None:
    while owners._worker is not None and not owners._worker.done():
        await asyncio.sleep(0)


async def test_a_container_ds01_created_is_listed_at_once():
    docker = FakeDockerApi(images=("busybox:latest",))
    owners = ContainerOwners(docker)
    bobs = await _create(docker, {"ds01.user": "bob"}, "/ds01/bob")
    owners.created(bobs, "bob")
    assert [c["Id"] for c in owners.screen(await _listed(docker, "bob"), "bob")] == [bobs]


async def test_an_image_labelled_container_is_never_listed_as_the_labels_user():
    """A legacy build step of alice's, from a base image labelled ds01.user=bob."""
    docker = FakeDockerApi(images=("busybox:latest",))
    owners = ContainerOwners(docker)
    step = await _create(docker, {"ds01.user": "bob"}, "/ds01/alice")
    unlabelled_parent = await _create(docker, {"ds01.user": "bob"})
    for _ in range(2):  # unknown at first, then verified as no one's
        assert owners.screen(await _listed(docker, "bob"), "bob") == []
        await _settle(owners)
    assert owners.owners == {step: None, unlabelled_parent: None}


async def test_an_unknown_container_is_verified_then_listed():
    """Made while ds01d was not listening (or before it started): hidden once, then shown."""
    docker = FakeDockerApi(images=("busybox:latest",))
    owners = ContainerOwners(docker)
    bobs = await _create(docker, {"ds01.user": "bob"}, "/ds01/bob")
    assert owners.screen(await _listed(docker, "bob"), "bob") == []
    await _settle(owners)
    assert [c["Id"] for c in owners.screen(await _listed(docker, "bob"), "bob")] == [bobs]


async def test_the_start_scan_verifies_every_labelled_container():
    docker = FakeDockerApi(images=("busybox:latest",))
    owners = ContainerOwners(docker)
    bobs = await _create(docker, {"ds01.user": "bob"}, "ds01-students-bob.slice")
    forged = await _create(docker, {"ds01.user": "bob"}, "/ds01/alice")
    await owners.scan()
    assert owners.owners == {bobs: "bob", forged: None}


async def test_events_verify_creates_and_forget_destroyed_containers():
    docker = FakeDockerApi(images=("busybox:latest",))
    owners = ContainerOwners(docker)
    bobs = await _create(docker, {"ds01.user": "bob"}, "/ds01/bob")
    plain = await _create(docker, {})
    for event in docker.log:
        owners.on_event(event)
    await _settle(owners)
    assert owners.owners == {bobs: "bob"}  # the unlabelled one claims no one: not inspected
    await docker.request("DELETE", f"/containers/{bobs}")
    owners.on_event(docker.log[-1])
    assert bobs not in owners.owners and plain not in owners.owners
