"""The gateway's answer to ``/_ping`` (ds01d/ping.py): dockerd's own, asked again when stale."""

from __future__ import annotations

from ds01d.docker_client import DockerError
from ds01d.ping import FRESH_S, PingAnswer
from tests.unit.fake_docker import FakeDockerApi


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class DownDocker(FakeDockerApi):
    async def ping(self) -> dict[str, str]:
        self.pings += 1
        raise DockerError(503, "dockerd is not reachable")


async def test_a_fresh_answer_is_reused_and_a_stale_one_asked_again() -> None:
    docker, clock = FakeDockerApi(), Clock()
    ping = PingAnswer(docker, clock)
    await ping.reply("HEAD")
    clock.now += FRESH_S
    await ping.reply("GET")
    assert docker.pings == 1
    clock.now += 0.01
    await ping.reply("HEAD")
    assert docker.pings == 2


async def test_the_reply_is_dockers_description_with_its_own_framing() -> None:
    ping = PingAnswer(FakeDockerApi(), Clock())
    head, get = await ping.reply("HEAD"), await ping.reply("GET")
    assert head is not None and get is not None
    assert (head.status, head.body, get.status, get.body) == (200, b"", 200, b"OK")
    assert head.content_type == "text/plain; charset=utf-8"
    names = {name.lower() for name, _ in head.headers}
    assert {"api-version", "ostype", "docker-experimental", "server"} <= names
    assert not names & {"date", "content-length", "content-type"}


async def test_a_dockerd_that_cannot_be_asked_gets_the_clients_own_ping() -> None:
    docker, clock = DownDocker(), Clock()
    ping = PingAnswer(docker, clock)
    assert await ping.reply("HEAD") is None
    assert await ping.reply("HEAD") is None
    assert docker.pings == 2  # never answered from nothing
