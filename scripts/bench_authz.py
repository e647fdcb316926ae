"""AuthZ plugin throughput and latency: ds01's plugin next to an allow-everything plugin.

Both serve the same AuthZReq payloads (a realistic create and a list) on unix sockets in
this process and are driven by the same client, side by side, so only ratios are reported.
"""

from __future__ import annotations

import asyncio
import base64
import json
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path
from typing import cast

import aiohttp
import uvloop
from aiohttp import web

from authz_plugin.server import PluginServer
from ds01d.docker_client import DockerClient
from ds01d.policy_store import PolicyStore
from ds01d.service import Service
from ds01d.tickets import TOKEN_HEADER
from policy.identity import Identity
from tests.unit.policy.conftest import cli_create_body

REQUESTS = 3000
CONCURRENCY = 8


def allow_all_app() -> web.Application:
    app = web.Application()

    async def activate(_: web.Request) -> web.Response:
        return web.json_response({"Implements": ["authz"]})

    async def allow(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"Allow": True})

    app.router.add_post("/Plugin.Activate", activate)
    app.router.add_post("/AuthZPlugin.AuthZReq", allow)
    app.router.add_post("/AuthZPlugin.AuthZRes", allow)
    return app


def payloads(service: Service) -> list[bytes]:
    """One round of requests, each with its own single-use gateway ticket."""
    body = json.dumps(cli_create_body()).encode()
    alice = Identity(uid=1001, user="alice", groups=frozenset({"alice"}), home="/home/alice")
    out = []
    for i in range(REQUESTS):
        create = i % 2 == 0
        uri = "/v1.41/containers/create" if create else "/v1.41/containers/json?all=1"
        method = "POST" if create else "GET"
        token = service.tickets.issue(alice, method, uri, body if create else None)
        req = {
            "User": "",
            "UserAuthNMethod": "",
            "RequestMethod": method,
            "RequestUri": uri,
            "RequestHeaders": {
                "Content-Type": "application/json",
                "User-Agent": "Docker-Client/28.2.2",
                TOKEN_HEADER: token,
            },
        }
        if create:
            req["RequestBody"] = base64.b64encode(body).decode()
        out.append(json.dumps(req).encode())
    return out


async def drive(sock: str, bodies: list[bytes]) -> tuple[float, list[float]]:
    latencies: list[float] = []
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    connector = aiohttp.UnixConnector(path=sock, limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                start = time.perf_counter()
                async with session.post("http://plugin/AuthZPlugin.AuthZReq", data=body) as resp:
                    answer = await resp.json()
                latencies.append(time.perf_counter() - start)
                assert answer["Allow"] is True, answer

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return time.perf_counter() - started, latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class CannedPlugin(asyncio.Protocol):
    """A plugin that reads nothing: each call is answered with the same bytes once its
    Content-Length says it has arrived. What dockerd's plugin round trip costs by itself."""

    ALLOW = b'HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n{"Allow":true}'
    ACTIVATE = b'HTTP/1.1 200 OK\r\nContent-Length: 25\r\n\r\n{"Implements":["authz"]}'

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.pending = b""

    def data_received(self, data: bytes) -> None:
        self.pending += data
        while (end := self.pending.find(b"\r\n\r\n")) >= 0:
            head = self.pending[:end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
            if len(self.pending) < end + 4 + length:
                return
            self.pending = self.pending[end + 4 + length :]
            self.transport.write(self.ACTIVATE if b"/plugin.activate" in head else self.ALLOW)


def serve(name: str, sock: str, tickets_from: list[bytes] | None = None) -> None:
    """Child process: one plugin on its own core budget, like a real daemon."""

    async def run() -> None:
        if name == "ds01":  # as ds01d serves it (ds01d.daemon)
            server = PluginServer(SERVICE.authz_request, SERVICE.authz_response, read_answer=False)
            await server.start(sock)
        elif name == "canned":
            await asyncio.get_running_loop().create_unix_server(CannedPlugin, sock)
        else:
            runner = web.AppRunner(allow_all_app(), access_log=None)
            await runner.setup()
            await web.UnixSite(runner, sock).start()
        await asyncio.Event().wait()

    if name == "canned":
        uvloop.run(run())
    else:
        asyncio.run(run())


SERVICE = Service(PolicyStore(None), DockerClient("unix:///nonexistent.sock"))


async def wait_for(sock: str) -> None:
    for _ in range(200):
        if Path(sock).exists():
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"plugin did not start on {sock}")


async def main() -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="ds01b-"))
    socks = {"ds01": str(tmp / "ds01.sock"), "allow_all": str(tmp / "allow.sock")}
    # Tickets are issued before the fork so the ds01 child knows them (as the gateway would).
    rounds = [payloads(SERVICE) for _ in range(3)]
    children = []
    for name, sock in socks.items():
        child = multiprocessing.get_context("fork").Process(
            target=serve, args=(name, sock), daemon=True
        )
        child.start()
        children.append(child)
    try:
        for sock in socks.values():
            await wait_for(sock)
        results: dict[str, tuple[float, list[float]]] = {}
        for bodies in rounds:  # interleaved so both plugins see the same machine noise
            for name in ("allow_all", "ds01"):
                elapsed, lat = await drive(socks[name], bodies)
                prev = results.get(name, (0.0, []))
                results[name] = (prev[0] + elapsed, prev[1] + lat)
    finally:
        for child in children:
            child.terminate()
            child.join()
    out = {}
    for name, (elapsed, lat) in results.items():
        out[f"{name}_rps"] = len(lat) / elapsed
        out[f"{name}_p50_ms"] = statistics.median(lat) * 1000
        out[f"{name}_p99_ms"] = pct(lat, 0.99) * 1000
    out["latency_p50_ratio"] = out["ds01_p50_ms"] / out["allow_all_p50_ms"]
    out["latency_p99_ratio"] = out["ds01_p99_ms"] / out["allow_all_p99_ms"]
    out["throughput_ratio"] = out["ds01_rps"] / out["allow_all_rps"]
    return out


def report(out: dict[str, float]) -> None:
    print(
        "AuthZ plugin, realistic create + list payloads, "
        f"{REQUESTS} requests x 3 rounds, concurrency {CONCURRENCY}:"
    )
    for name in ("allow_all", "ds01"):
        print(
            f"  {name:10s} {out[name + '_rps']:8.0f} req/s   p50 {out[name + '_p50_ms']:.3f} ms"
            f"   p99 {out[name + '_p99_ms']:.3f} ms"
        )
    print(
        f"  ds01 / allow-all: latency p50 x{out['latency_p50_ratio']:.2f}, "
        f"p99 x{out['latency_p99_ratio']:.2f}, throughput x{out['throughput_ratio']:.2f} "
        "(goal: latency <= 1.2x, throughput >= 1/1.2)"
    )


if __name__ == "__main__":
    report(asyncio.run(main()))
