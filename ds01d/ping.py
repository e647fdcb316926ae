"""dockerd's answer to ``/_ping``, kept for a moment: every docker command begins with a ping.

The docker CLI and the SDKs ping before each command to negotiate the API version, so a
forwarded ping costs every command a round trip to dockerd and two AuthZ plugin calls. The
gateway answers a ping (still decided and recorded like any request) with the headers of
dockerd's own last answer while it is at most ``FRESH_S`` old, and asks dockerd again after.
Commands run back to back (scripts, Compose, a Dev Container starting) mostly find it fresh;
one run alone after a pause pays for the ping as before. When dockerd cannot be asked, the
client's ping is forwarded, so the client meets dockerd's own failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ds01d.docker_client import DockerError
from ds01d.ports import DockerApi
from gateway.types import Reply

# Short enough that a dockerd that stopped or changed version is noticed within a moment.
FRESH_S = 2.0
# What describes dockerd; the reply sets its own Date, length and type.
_KEPT = frozenset(
    {
        "api-version",
        "builder-version",
        "cache-control",
        "docker-experimental",
        "ostype",
        "pragma",
        "server",
        "swarm",
    }
)
_TEXT = "text/plain; charset=utf-8"


class PingAnswer:
    def __init__(
        self,
        docker: DockerApi,
        clock: Callable[[], float] = time.monotonic,
        fresh_s: float = FRESH_S,
    ) -> None:
        self.docker = docker
        self.clock = clock
        self.fresh_s = fresh_s
        self.headers: tuple[tuple[str, str], ...] | None = None
        self.asked_at = 0.0

    async def reply(self, method: str) -> Reply | None:
        """The answer to a client's HEAD or GET ping; None: forward the client's own."""
        now = self.clock()
        if self.headers is None or now - self.asked_at > self.fresh_s:
            try:
                answer = await self.docker.ping()
            except DockerError:
                self.headers = None
                return None
            self.headers = tuple((k, v) for k, v in answer.items() if k.lower() in _KEPT)
            self.asked_at = now
        body = b"" if method == "HEAD" else b"OK"  # dockerd's own: HEAD has length 0
        return Reply(200, body, content_type=_TEXT, headers=self.headers)
