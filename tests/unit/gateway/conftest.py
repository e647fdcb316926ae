"""Fixtures for the gateway framing tests: a fake dockerd and a gateway in a short tmp dir."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import pytest

from gateway.server import Gateway
from gateway.types import Handler

from .fakes import FakeDockerd, Script, remove_tree, short_tmpdir


class Rig:
    """A gateway in front of a scripted fake dockerd, plus raw clients."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.upstream_path = os.path.join(base, "dockerd.sock")
        self.path = os.path.join(base, "gw.sock")
        self.dockerd: FakeDockerd | None = None
        self.gateway: Gateway | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self, handler: Handler, script: Script | None = None, **kw: int) -> Gateway:
        if script is not None:
            self.dockerd = FakeDockerd(self.upstream_path, script)
            await self.dockerd.start()
        self.gateway = Gateway(handler, self.upstream_path, **kw)
        await self.gateway.start(self.path)
        return self.gateway

    async def client(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_unix_connection(self.path)
        self._writers.append(writer)
        return reader, writer

    async def settled(self, baseline: set[asyncio.Task[object]], timeout: float = 3.0) -> None:
        """Wait until the gateway holds no connection and no task beyond ``baseline``."""
        assert self.gateway is not None
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            extra = {t for t in asyncio.all_tasks() if not t.done()} - baseline
            extra.discard(asyncio.current_task())  # type: ignore[arg-type]
            # The fake dockerd's own connection tasks are not the gateway's to clean up.
            extra = {t for t in extra if "FakeDockerd" not in repr(t.get_coro())}
            if self.gateway.connections == 0 and not extra:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"leaked: {self.gateway.connections} connections, {extra}")
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        if self.gateway is not None:
            await self.gateway.stop()
        if self.dockerd is not None:
            await self.dockerd.stop()
        for writer in self._writers:
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    base = short_tmpdir()
    r = Rig(base)
    try:
        yield r
    finally:
        await r.close()
        remove_tree(base)
