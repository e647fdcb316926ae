"""The DockerApi contract: a real dockerd (via DockerClient) and the unit tests' fake answer alike.

Each test runs twice, on ``DockerClient`` against the session's private dockerd and on
``tests.unit.fake_docker.FakeDockerApi``, with the same assertions: what ds01d reads from each
answer, a missing object as None, and a refused call as ``DockerError`` with dockerd's status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ds01d.docker_client import DockerClient, DockerError
from ds01d.ports import DockerApi
from tests.harness.images import BUSYBOX_TAG
from tests.unit.fake_docker import FakeDockerApi

LABELS = {"ds01.user": "alice", "ds01.contract": "yes"}


@pytest.fixture(params=[pytest.param("real", marks=pytest.mark.docker), "fake"])
async def docker(request: pytest.FixtureRequest) -> AsyncIterator[DockerApi]:
    api: DockerApi
    if request.param == "real":
        dockerd = request.getfixturevalue("private_dockerd")
        request.getfixturevalue("busybox_image")
        api = DockerClient(dockerd.host)
    else:
        api = FakeDockerApi(images=(BUSYBOX_TAG,))
    yield api
    await api.close()


@pytest.fixture
def name() -> str:
    return f"contract-{uuid.uuid4().hex[:10]}"


@contextlib.asynccontextmanager
async def container(docker: DockerApi, name: str, **body: Any) -> AsyncIterator[str]:
    """A container created through ``request``; removed (forced) afterwards."""
    created = await docker.request(
        "POST",
        "/containers/create",
        params={"name": name},
        body={"Image": BUSYBOX_TAG, "Cmd": ["sleep", "300"], "Labels": LABELS, **body},
    )
    try:
        yield created["Id"]
    finally:
        with contextlib.suppress(DockerError):
            await docker.request("DELETE", f"/containers/{created['Id']}", params={"force": "1"})


async def test_a_container_is_found_by_id_name_and_prefix(docker: DockerApi, name: str) -> None:
    async with container(docker, name) as cid:
        for ref in (cid, name, cid[:12]):
            info = await docker.inspect_container(ref)
            assert info is not None, ref
            assert info["Id"] == cid and info["Name"] == f"/{name}"
            assert info["Config"]["Labels"] == LABELS
            assert info["State"]["Status"] == "created"
            assert isinstance(info["HostConfig"], dict)
    assert await docker.inspect_container(cid) is None  # removed: missing, not an error
    assert await docker.inspect_container(f"{name}-none") is None


async def test_the_list_shows_every_container_and_filters_by_label(
    docker: DockerApi, name: str
) -> None:
    async with container(docker, name) as cid:
        listed = {c["Id"]: c for c in await docker.list_containers()}
        assert listed[cid]["Names"] == [f"/{name}"]
        assert listed[cid]["Labels"] == LABELS and listed[cid]["State"] == "created"
        mine = await docker.list_containers({"label": ["ds01.user=alice", "ds01.contract"]})
        assert cid in {c["Id"] for c in mine}
        theirs = await docker.list_containers({"label": ["ds01.user=bob"]})
        assert cid not in {c["Id"] for c in theirs}


async def test_refused_calls_raise_dockers_status(docker: DockerApi, name: str) -> None:
    with pytest.raises(DockerError) as missing_image:
        await docker.request(
            "POST", "/containers/create", params={"name": name}, body={"Image": "ds01-none"}
        )
    assert missing_image.value.status == 404
    assert "No such image: ds01-none:latest" in missing_image.value.message
    async with container(docker, name) as cid:
        with pytest.raises(DockerError) as taken:
            await docker.request(
                "POST", "/containers/create", params={"name": name}, body={"Image": BUSYBOX_TAG}
            )
        assert taken.value.status == 409
        with pytest.raises(DockerError) as stopped:
            await docker.request("POST", f"/containers/{cid}/exec", body={"Cmd": ["true"]})
        assert stopped.value.status == 409
    with pytest.raises(DockerError) as gone:
        await docker.request("DELETE", f"/containers/{cid}", params={"force": "1"})
    assert gone.value.status == 404


async def test_an_exec_names_its_container(docker: DockerApi, name: str) -> None:
    async with container(docker, name) as cid:
        await docker.request("POST", f"/containers/{cid}/start")
        created = await docker.request(
            "POST", f"/containers/{cid}/exec", body={"Cmd": ["true"], "AttachStdout": False}
        )
        info = await docker.inspect_exec(created["Id"])
        assert info is not None and info["ID"] == created["Id"]
        assert info["ContainerID"] == cid and info["Running"] is False
    assert await docker.inspect_exec("0" * 64) is None


async def test_volumes_networks_and_images(docker: DockerApi, name: str) -> None:
    volume = await docker.request("POST", "/volumes/create", body={"Name": name, "Labels": LABELS})
    network: dict[str, Any] = {}
    try:
        assert (volume["Name"], volume["Labels"]) == (name, LABELS)
        # An existing name is answered with that volume: its labels, not the ones asked for.
        again = await docker.request(
            "POST", "/volumes/create", body={"Name": name, "Labels": {"ds01.user": "bob"}}
        )
        assert again["Labels"] == LABELS
        assert (await docker.inspect_volume(name) or {}).get("Labels") == LABELS
        assert await docker.inspect_volume(f"{name}-none") is None
        network = await docker.request(
            "POST", "/networks/create", body={"Name": name, "Labels": LABELS}
        )
        for ref in (network["Id"], name):
            info = await docker.inspect_network(ref)
            assert info is not None and info["Id"] == network["Id"]
            assert (info["Name"], info["Labels"]) == (name, LABELS)
        assert await docker.inspect_network(f"{name}-none") is None
    finally:
        with contextlib.suppress(DockerError):
            await docker.request("DELETE", f"/volumes/{name}")
        if network:
            await docker.request("DELETE", f"/networks/{network['Id']}")
    image = await docker.inspect_image(BUSYBOX_TAG)
    assert image is not None and BUSYBOX_TAG in image["RepoTags"]
    assert (await docker.inspect_image(BUSYBOX_TAG.split(":")[0]) or {}).get("Id") == image["Id"]
    assert await docker.inspect_image("ds01-none:latest") is None
    with pytest.raises(DockerError) as no_volume:
        await docker.request("DELETE", f"/volumes/{name}")
    assert no_volume.value.status == 404


async def test_events_report_a_create_with_its_labels(docker: DockerApi, name: str) -> None:
    since = time.time() - 1
    async with container(docker, name) as cid:
        stream = docker.events(since=since)
        try:
            event = await asyncio.wait_for(_first(stream, cid, "create"), 60)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]  # an async generator
        assert event["Type"] == "container"
        assert event["Actor"]["Attributes"]["name"] == name
        assert event["Actor"]["Attributes"]["ds01.user"] == "alice"


async def _first(stream: AsyncIterator[dict[str, Any]], cid: str, action: str) -> dict[str, Any]:
    async for event in stream:
        if event["Actor"]["ID"] == cid and event["Action"] == action:
            return event
    raise AssertionError("the event stream ended")


async def test_ping_names_the_api_version_and_os(docker: DockerApi) -> None:
    headers = {k.lower(): v for k, v in (await docker.ping()).items()}
    major, _, minor = headers["api-version"].partition(".")
    assert major.isdigit() and minor.isdigit()
    assert headers["ostype"] == "linux"


async def test_networks_are_listed_by_label(docker: DockerApi, name: str) -> None:
    created = await docker.request(
        "POST", "/networks/create", body={"Name": name, "Labels": LABELS}
    )
    try:
        label = next(f"{k}={v}" for k, v in LABELS.items())
        listed = await docker.request(
            "GET", "/networks", params={"filters": json.dumps({"label": [label]})}
        )
        assert [n["Name"] for n in listed] == [name]
        other = await docker.request(
            "GET", "/networks", params={"filters": json.dumps({"label": ["ds01.user=nobody"]})}
        )
        assert other == []
    finally:
        await docker.request("DELETE", f"/networks/{created['Id']}")
