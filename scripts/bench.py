"""`make bench`: DS01's overheads, each measured side by side with its baseline in one run.

Timings on a shared machine are noisy, so every figure that matters is a ratio of two
measurements interleaved in the same run; absolute numbers are printed for context only.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from allocator.inventory import load_inventory_file
from allocator.ledger import Ledger, Reservation
from allocator.request import GpuRequest
from ds01d.docker_client import DockerClient
from ds01d.gpus import GpuBroker, container_summaries
from policy.identity import Identity
from policy.limits import resolve
from policy.loader import parse_policy
from scripts import bench_authz
from tests.harness.dockerd import PrivateDockerd, remove_plugin_spec, write_plugin_spec
from tests.harness.images import import_busybox_image
from tests.harness.users import ensure_user
from tests.stack.ds01 import IMAGE, REPO, Ds01Stack, user_python

STUDENT = "ds01-bench"
POLICY = f"""
defaults: {{max_mig_instances: 1, max_gpus: 1, allow_full_gpu: true, gpu_hold_after_stop: 0}}
groups:
  admins: {{admin: true, members: [root]}}
  students: {{members: [{STUDENT}]}}
"""


# The reference plugins `make bench` compares DS01's with, by name.
REFERENCES = {
    "canned": "a canned-answer plugin",
    "noop": "a do-nothing aiohttp plugin",
}


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleave(
    a: Callable[[], object], b: Callable[[], object], rounds: int
) -> tuple[list[float], list[float]]:
    """Run a and b alternately, `rounds` times each, so both see the same noise.

    A few untimed rounds come first: the first runs after a pause are slower (cold caches,
    a sleeping CPU), and whichever side went first would pay for it.
    """
    for _ in range(5):
        a()
        b()
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(timed(a))
        tb.append(timed(b))
    return ta, tb


def cli(host: str, *args: str, user: tuple[int, int, str] | None = None) -> Callable[[], None]:
    """One docker command; with ``user`` (uid, gid, home), run as that user. Python then
    forks instead of using vfork (~1 ms more), so compare such a run with one made the same
    way (``AS_ROOT``), never with a plain one."""
    extra: dict[str, Any] = {}
    if user is not None:
        extra = {
            "user": user[0],
            "group": user[1],
            "extra_groups": [],
            "env": {**os.environ, "HOME": user[2]},
        }

    def run() -> None:
        subprocess.run(["docker", "-H", host, *args], check=True, capture_output=True, **extra)

    return run


AS_ROOT = (0, 0, "/root")


def median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(a) / statistics.median(b)


def paired_ratio(a: list[float], b: list[float]) -> float:
    """The median of the ratios of runs made next to each other (interleave pairs them)."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def line(label: str, governed: list[float], base: list[float], goal: str) -> None:
    print(
        f"  {label:58s} x{paired_ratio(governed, base):.2f}  "
        f"({statistics.median(governed) * 1000:.1f} ms vs {statistics.median(base) * 1000:.1f} ms; goal {goal})"
    )


class RawClient:
    """One kept-alive connection that sends a fixed GET and reads its answer (no CLI noise)."""

    def __init__(self, host: str, target: bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(host.removeprefix("unix://"))
        self.request = b"GET %s HTTP/1.1\r\nHost: docker\r\nUser-Agent: ds01-bench\r\n\r\n" % target

    def __call__(self) -> None:
        self.sock.sendall(self.request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += self._recv()
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"bench request refused: {head[:200]!r}")
        length = next(
            int(v)
            for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")[1:])
            if k.lower() == b"content-length"
        )
        while len(body) < length:
            body += self._recv()

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise RuntimeError("bench connection closed")
        return data

    def close(self) -> None:
        self.sock.close()


def bench_raw(stack: Ds01Stack, plain: PrivateDockerd, refs: dict[str, PrivateDockerd]) -> None:
    """The same comparisons on one HTTP request, without the CLI's ~10 ms of its own."""
    rounds = int(os.environ.get("DS01_BENCH_RAW_ROUNDS", "2000"))
    target = b"/v1.41/containers/json"
    hosts = {"ds01": stack.dockerd.host, "plain": plain.host, "gateway": stack.gateway}
    hosts.update({name: ref.host for name, ref in refs.items()})
    clients = {name: RawClient(host, target) for name, host in hosts.items()}
    try:
        print(f"GET {target.decode()} on a kept-alive connection (median of {rounds} rounds):")
        a, b = interleave(clients["ds01"], clients["plain"], rounds)
        line("dockerd with ds01 plugin / without", a, b, "context: the CLI figure is the goal")
        for name, label in REFERENCES.items():
            a, b = interleave(clients[name], clients["plain"], rounds)
            line(f"dockerd with {label} / without", a, b, "reference")
        a, b = interleave(clients["gateway"], clients["ds01"], rounds)
        line("gateway + plugin / same dockerd direct", a, b, "the gateway alone")
    finally:
        for client in clients.values():
            client.close()


def socat_relay(target: str, path: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["socat", f"UNIX-LISTEN:{path},fork,mode=600", f"UNIX-CONNECT:{target}"]
    )
    for _ in range(100):
        if os.path.exists(path):
            break
        time.sleep(0.05)
    return proc


def bench_latency(stack: Ds01Stack, plain: PrivateDockerd, refs: dict[str, PrivateDockerd]) -> None:
    gw, direct, unplugged = stack.gateway, stack.dockerd.host, plain.host
    rounds = int(os.environ.get("DS01_BENCH_ROUNDS", "200"))
    print(f"docker CLI wall time (median of {rounds} interleaved runs each):")
    a, b = interleave(cli(direct, "ps"), cli(unplugged, "ps"), rounds)
    line("docker ps, dockerd with ds01 plugin / without", a, b, "<= 1.10")
    for name, label in REFERENCES.items():
        a, b = interleave(cli(refs[name].host, "ps"), cli(unplugged, "ps"), rounds)
        line(f"docker ps, dockerd with {label} / without", a, b, "reference")
    # The baseline is a dockerd without DS01 at all: the plugin's cost counts against the goal.
    # Commands run back to back, so the gateway answers their pings from dockerd's own recent
    # answer (ds01d/ping.py); a command run alone after a pause forwards its ping.
    a, b = interleave(cli(gw, "ps"), cli(unplugged, "ps"), rounds)
    line("docker ps, gateway + plugin / dockerd direct", a, b, "<= 1.15")
    # A student's `docker ps` is also owner-filtered and screened by verified owner; the
    # baseline is root's on the plain dockerd, which lists one container as they do.
    student = ensure_user(STUDENT)
    cli(gw, "run", "-d", "--name", "benchs", IMAGE, "sleep", "600", user=student)()
    try:
        a, b = interleave(cli(gw, "ps", user=student), cli(unplugged, "ps", user=AS_ROOT), rounds)
        line("docker ps as a student, gateway + plugin / direct", a, b, "<= 1.15")
    finally:
        cli(gw, "rm", "-f", "benchs", user=student)()
    a, b = interleave(cli(gw, "inspect", "benchc"), cli(unplugged, "inspect", "benchc"), rounds)
    line("docker inspect, gateway + plugin / direct", a, b, "<= 1.15")
    a, b = interleave(cli(gw, "ps"), cli(direct, "ps"), rounds)
    line("docker ps, gateway + plugin / same dockerd direct", a, b, "the gateway alone")
    bench_raw(stack, plain, refs)


def bench_cp(stack: Ds01Stack, plain: PrivateDockerd, base: Path) -> None:
    gw, direct, unplugged = stack.gateway, stack.dockerd.host, plain.host
    print("docker cp of 256 MiB out of a container (throughput, interleaved):")
    for host in (gw, unplugged):
        subprocess.run(
            [
                "docker",
                "-H",
                host,
                "exec",
                "benchc",
                "dd",
                "if=/dev/zero",
                "of=/tmp/big",
                "bs=1M",
                "count=256",
            ],
            check=True,
            capture_output=True,
        )
    relay_path = str(base / "socat.sock")
    relay = socat_relay(stack.dockerd.socket_path, relay_path)
    try:
        out = base / "cp-out"

        def cp(host: str) -> Callable[[], None]:
            def run() -> None:
                subprocess.run(
                    ["docker", "-H", host, "cp", "benchc:/tmp/big", str(out)],
                    check=True,
                    capture_output=True,
                )
                out.unlink()

            return run

        gateway_t, socat_t, direct_t = [], [], []
        for _ in range(3):
            gateway_t.append(timed(cp(gw)))
            socat_t.append(timed(cp(f"unix://{relay_path}")))
            direct_t.append(timed(cp(direct)))
        mib = 256
        g, s, d = (mib / statistics.median(t) for t in (gateway_t, socat_t, direct_t))
        print(
            f"  {'gateway / socat relay':46s} x{g / s:.2f}  ({g:.0f} vs {s:.0f} MiB/s; goal >= 0.9)"
        )
        print(
            f"  {'gateway / dockerd direct (same dockerd)':46s} x{g / d:.2f}  ({g:.0f} vs {d:.0f} MiB/s)"
        )
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.wait()


# Runs as another user: opens N connections to the gateway, makes each a kept-alive idle one
# (one /_ping answered), reports how many the gateway let it keep, holds them until stdin ends.
IDLE_HOLDER = r"""
import json, resource, socket, sys
path, count = sys.argv[1], int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 256), hard))
held, refused = [], 0
for _ in range(count):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data and (chunk := s.recv(4096)):
        data += chunk
    if data.startswith(b"HTTP/1.1 200"):
        held.append(s)
    else:
        refused += 1
        s.close()
print(json.dumps({"held": len(held), "refused": refused}), flush=True)
sys.stdin.read()
"""


def hold_idle(stack: Ds01Stack, user: str, count: int) -> tuple[subprocess.Popen[str], dict]:
    """Start a process of ``user`` holding ``count`` idle gateway connections."""
    cmd = [user_python(), "-c", IDLE_HOLDER, str(stack.gateway_socket), str(count)]
    proc = subprocess.Popen(
        ["runuser", "-u", user, "--", *cmd],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd="/tmp",
    )
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline() or "{}")


def bench_idle_connections(stack: Ds01Stack, plain: PrivateDockerd) -> None:
    """A load check, not a test: does one user holding idle connections slow anyone else?"""
    user = "nobody"
    rounds = int(os.environ.get("DS01_BENCH_ROUNDS", "50")) // 2
    print(
        f"docker ps by root through the gateway while {user} holds N idle connections "
        f"(median of {rounds} runs interleaved with dockerd without DS01):"
    )
    base_ratio = None
    for count in (0, 50, 500):
        proc, report = hold_idle(stack, user, count) if count else (None, {"held": 0})
        try:
            a, b = interleave(cli(stack.gateway, "ps"), cli(plain.host, "ps"), rounds)
        finally:
            if proc is not None and proc.stdin is not None:
                proc.stdin.close()
                proc.wait(timeout=60)
        ratio = median_ratio(a, b)
        base_ratio = base_ratio or ratio
        print(
            f"  N={count:<4d} gateway / direct x{ratio:.2f}, vs N=0 x{ratio / base_ratio:.2f}  "
            f"({report.get('held')} held, {report.get('refused', 0)} refused by the "
            f"per-user cap; {statistics.median(a) * 1000:.1f} ms vs "
            f"{statistics.median(b) * 1000:.1f} ms; goal: vs N=0 <= 1.10)"
        )


def http_create(sock_path: str, body: bytes) -> tuple[float, int]:
    start = time.perf_counter()
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock_path)
        s.sendall(
            b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return time.perf_counter() - start, int(data.split()[1])


def concurrent_creates(sock_path: str, payload: bytes, clients: int) -> list[tuple[float, int]]:
    """`clients` creates at once, each on its own connection; (latency, status) of each."""
    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(lambda _: http_create(sock_path, payload), range(clients)))


def bench_allocation(stack: Ds01Stack) -> None:
    print("GPU allocation:")
    doc = parse_policy(POLICY)
    limits = resolve(doc, Identity(uid=0, user="root"))
    ledger = Ledger(load_inventory_file(str(REPO / "config/inventory.example.yaml")))
    request = GpuRequest(count=1)
    n, start = 20000, time.perf_counter()
    for i in range(n):
        result = ledger.reserve("u", 1, "g", limits, request, float(i))
        assert isinstance(result, Reservation), result
        ledger.rollback(result.reservation_id)
    per_s = n / (time.perf_counter() - start)
    print(f"  allocation decisions (reserve + rollback, pure ledger): {per_s:,.0f}/s")
    body = json.dumps(
        {
            "Image": IMAGE,
            "Cmd": ["true"],
            "HostConfig": {"DeviceRequests": [{"Count": 1, "Capabilities": [["gpu"]]}]},
        }
    ).encode()
    plain = json.dumps({"Image": IMAGE, "Cmd": ["true"]}).encode()
    for clients in (1, 20):
        lat: dict[str, list[float]] = {"gpu": [], "plain": []}
        for _ in range(3):
            for kind, payload in (("gpu", body), ("plain", plain)):
                results = concurrent_creates(str(stack.gateway_socket), payload, clients)
                lat[kind] += [t for t, _ in results]
                stack.remove_all_containers()
                time.sleep(0.3)
        p99 = {k: sorted(v)[max(0, int(len(v) * 0.99) - 1)] for k, v in lat.items()}
        print(
            f"  create latency at {clients:2d} concurrent clients, p99: GPU create {p99['gpu'] * 1000:.0f} ms vs "
            f"plain create {p99['plain'] * 1000:.0f} ms (x{p99['gpu'] / p99['plain']:.2f})"
        )


def bench_reconcile(plain: PrivateDockerd, count: int) -> None:
    print(f"Reconcile from labels ({count} created, not started, containers):")
    labels = [
        "--label",
        "ds01.user=bench",
        "--label",
        "ds01.devices=MIG-1a2b3c4d-0000-0000-0000-000000000000",
    ]

    async def create_all() -> None:
        docker = DockerClient(plain.host)
        sem = asyncio.Semaphore(8)

        async def one(i: int) -> None:
            async with sem:
                await docker.request(
                    "POST",
                    "/containers/create",
                    body={
                        "Image": IMAGE,
                        "Cmd": ["true"],
                        "Labels": {
                            "ds01.user": "bench",
                            "ds01.uid": "0",
                            "ds01.devices": "MIG-1a2b3c4d-0000-0000-0000-000000000000"
                            if i == 0
                            else "",
                        },
                    },
                )

        await asyncio.gather(*(one(i) for i in range(count)))
        await docker.close()

    del labels
    started = time.perf_counter()
    asyncio.run(create_all())
    print(f"  ({count} containers created in {time.perf_counter() - started:.0f} s)")

    async def reconcile() -> float:
        docker = DockerClient(plain.host)
        doc = parse_policy(POLICY)
        broker = GpuBroker(
            Ledger(load_inventory_file(str(REPO / "config/inventory.example.yaml"))),
            limits_for=lambda u, uid: resolve(doc, Identity(uid=uid, user=u)),
            clock=time.time,
        )
        start = time.perf_counter()
        broker.rebuild(await container_summaries(docker), time.time())
        took = time.perf_counter() - start
        await docker.close()
        return took

    took = statistics.median([asyncio.run(reconcile()) for _ in range(3)])
    list_only = statistics.median([timed(cli(plain.host, "ps", "-aq")) for _ in range(3)])
    print(
        f"  rebuild the ledger: {took * 1000:.0f} ms (docker ps -aq of the same containers: "
        f"{list_only * 1000:.0f} ms, x{took / list_only:.2f})"
    )


SECTIONS = ("authz", "latency", "cp", "idle", "allocation", "reconcile")


def start_container(governed: str, *others: str) -> None:
    """The same container on every dockerd compared: made through DS01 first, then made
    with DS01's labels on the others, so every `docker ps` lists byte-for-byte alike."""
    run = ["run", "-d", "--name", "benchc"]
    subprocess.run(
        ["docker", "-H", governed, *run, IMAGE, "sleep", "600"], check=True, capture_output=True
    )
    inspected = subprocess.run(
        ["docker", "-H", governed, "inspect", "benchc"], check=True, capture_output=True, text=True
    )
    labels = json.loads(inspected.stdout)[0]["Config"]["Labels"] or {}
    flags = [f"--label={key}={value}" for key, value in sorted(labels.items())]
    for host in others:
        subprocess.run(
            ["docker", "-H", host, *run, *flags, IMAGE, "sleep", "600"],
            check=True,
            capture_output=True,
        )


def main(argv: list[str]) -> int:
    """Run every section, or those named: ``python -m scripts.bench latency`` (see SECTIONS)."""
    if os.geteuid() != 0:
        print("make bench must run as root (it starts private dockerds)")
        return 2
    wanted = set(argv) or set(SECTIONS)
    if not wanted <= set(SECTIONS):
        print(f"unknown section(s) {sorted(wanted - set(SECTIONS))}; known: {', '.join(SECTIONS)}")
        return 2
    if "authz" in wanted:
        print("== AuthZ plugin ==")
        bench_authz.report(asyncio.run(bench_authz.main()))
    if not wanted - {"authz"}:
        return 0
    base = Path(tempfile.mkdtemp(prefix="ds01bench-", dir="/tmp"))
    os.chmod(base, 0o755)
    stack = Ds01Stack(base / "s", POLICY)
    plain = PrivateDockerd(base / "p")
    # Reference plugins, each on a dockerd of its own: the floor (dockerd's plugin round trip,
    # answered without reading), and a do-nothing plugin as one would write it with aiohttp.
    plugins = {
        name: multiprocessing.get_context("fork").Process(
            target=bench_authz.serve, args=(kind, str(base / f"{name}.sock")), daemon=True
        )
        for name, kind in (("canned", "canned"), ("noop", "allow_all"))
    }
    refs = {name: PrivateDockerd(base / name, authz_plugin=f"ds01{name}") for name in plugins}
    try:
        stack.start()
        plain.start()
        for name, plugin in plugins.items():
            plugin.start()
            asyncio.run(bench_authz.wait_for(str(base / f"{name}.sock")))
            write_plugin_spec(f"ds01{name}", str(base / f"{name}.sock"))
            refs[name].start()
        # Every dockerd compared lists the same one container: a `docker ps` of an empty
        # dockerd is cheaper, and would flatter whichever side it is.
        for dockerd in (plain, *refs.values()):
            import_busybox_image(dockerd.host, IMAGE)
        print("\n== Docker through DS01 ==")
        start_container(stack.gateway, plain.host, *(ref.host for ref in refs.values()))
        if "latency" in wanted:
            bench_latency(stack, plain, refs)
        if "cp" in wanted:
            bench_cp(stack, plain, base)
        stack.remove_all_containers()
        if "idle" in wanted:
            print()
            bench_idle_connections(stack, plain)
        if "allocation" in wanted:
            print()
            bench_allocation(stack)
        if "reconcile" in wanted:
            print()
            bench_reconcile(plain, int(os.environ.get("DS01_BENCH_CONTAINERS", "1000")))
    finally:
        for name, plugin in plugins.items():
            refs[name].stop()
            remove_plugin_spec(f"ds01{name}")
            plugin.terminate()
        plain.stop()
        stack.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
