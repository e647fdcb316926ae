"""The name race of issue 12, replayed for 10 s as real Unix users through the gateway.

dockerd resolves a reference as a full ID, then a name, then an ID prefix. A student names their
own container after a prefix of alice's container ID and renames it back and forth in a tight
loop, while firing ``docker cp`` (in and out), ``kill``, ``stop``, ``exec``, ``commit`` and
``network connect`` at that prefix. DS01 checks what the reference names and forwards the full
ID it checked, so every operation that passes lands on the student's own container and none on
alice's: her container keeps running, holds no file of the student's, ran no exec, has no commit
and joined no network. dockerd's own event log is the witness.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time

import pytest

from tests.stack.ds01 import IMAGE

pytestmark = [pytest.mark.docker, pytest.mark.e2e]

ALICE, BOB = "e2e-alice", "e2e-bob"
RACE_SECONDS = 10
DECOY = "dt-race-decoy"
NETWORK = "dt-race-net"
COMMIT_TAG = f"{BOB}/dt-race-commit:1"
# The actions an attack on alice's container would leave in dockerd's event log.
ATTACK_ACTIONS = {
    "kill",
    "stop",
    "die",
    "exec_create",
    "exec_start",
    "commit",
    "extract-to-dir",
    "archive-path",
    "pause",
    "rename",
}

RENAME_LOOP = """
import json, socket, sys, time
sock, cid, names, seconds = sys.argv[1], sys.argv[2], sys.argv[3:5], float(sys.argv[5])
done = {"ok": 0, "failed": 0}
deadline = time.monotonic() + seconds
i = 0
while time.monotonic() < deadline:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(sock)
        s.sendall((f"POST /v1.41/containers/{cid}/rename?name={names[i % 2]} HTTP/1.1\\r\\n"
                   "Host: docker\\r\\nConnection: close\\r\\nContent-Length: 0\\r\\n\\r\\n").encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    done["ok" if data.split()[1] == b"204" else "failed"] += 1
    i += 1
print(json.dumps(done))
"""


def ok(result) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def rename_loop(stack, bob_id: str, prefix: str, out: dict) -> None:
    """Bob renames his container between alice's ID prefix and a decoy, by his full ID."""
    args = [str(stack.gateway_socket), bob_id, prefix, DECOY, str(RACE_SECONDS)]
    code = f"import sys; sys.argv = ['x', *{args!r}]\n" + RENAME_LOOP
    result = stack.python(code, user=BOB, timeout=RACE_SECONDS + 60)
    out.update(json.loads(ok(result).splitlines()[-1]))


def attack_ops(prefix: str, source: str) -> list[tuple[str, list[str]]]:
    return [
        ("cp_in", ["cp", source, f"{prefix}:/tmp/dt-pwned"]),
        ("cp_out", ["cp", f"{prefix}:/etc/passwd", "-"]),
        ("kill", ["kill", "-s", "WINCH", prefix]),  # harmless to sleep; still a kill event
        ("exec", ["exec", prefix, "touch", "/tmp/dt-exec-ran"]),
        ("commit", ["commit", prefix, COMMIT_TAG]),
        ("network_connect", ["network", "connect", NETWORK, prefix]),
        ("stop", ["stop", "-t", "0", prefix]),
    ]


def attack_loop(stack, bob_id: str, ops, deadline: float, hits: dict, lock) -> None:
    """Bob fires the operations at the prefix until the deadline; a stop that hit his own
    container is undone (by his full ID) so that the next exec has something to run in."""
    i = 0
    while time.monotonic() < deadline:
        name, args = ops[i % len(ops)]
        i += 1
        result = stack.docker(*args, user=BOB, timeout=60)
        with lock:
            hits.setdefault(name, [0, 0])[0 if result.returncode == 0 else 1] += 1
        if name == "stop" and result.returncode == 0:
            stack.docker("start", bob_id, user=BOB, timeout=60)


def events(stack, since: float, until: float) -> list[dict]:
    result = stack.docker(
        "events",
        "--since",
        f"{since:.3f}",
        "--until",
        f"{until:.3f}",
        "--format",
        "{{json .}}",
        direct=True,
    )
    return [json.loads(line) for line in ok(result).splitlines() if line.strip()]


def touched(event_list: list[dict], cid: str) -> list[dict]:
    """Events an attack on ``cid`` would leave: its own actions and networks it joined."""
    out = []
    for event in event_list:
        actor = event.get("Actor", {})
        if event.get("Type") == "container" and actor.get("ID") == cid:
            if event.get("Action", "").split(":")[0] in ATTACK_ACTIONS:
                out.append(event)
        elif event.get("Type") == "network" and actor.get("Attributes", {}).get("container") == cid:
            out.append(event)
    return out


@pytest.fixture
def race(clean, users):
    """Alice's running container, bob's decoy and network, a file for bob to copy in."""
    _, _, bob_home = users[BOB]
    source = os.path.join(bob_home, "dt-pwned")
    with open(source, "w") as f:
        f.write("written by the attacker\n")
    shutil.chown(source, BOB, BOB)
    alice_id = ok(
        clean.docker("run", "-d", "--name", "dt-victim", IMAGE, "sleep", "600", user=ALICE)
    )
    bob_id = ok(clean.docker("run", "-d", "--name", DECOY, IMAGE, "sleep", "600", user=BOB))
    ok(clean.docker("network", "create", NETWORK, user=BOB))
    try:
        yield clean, alice_id, bob_id, source
    finally:
        clean.remove_all_containers()
        clean.docker("network", "rm", NETWORK, direct=True)
        clean.docker("rmi", "-f", COMMIT_TAG, direct=True)
        os.unlink(source)


def run_race(stack, alice_id: str, bob_id: str, ops) -> tuple[dict, dict, list[dict]]:
    """The rename loop and two attackers (out of phase) for RACE_SECONDS; dockerd's events."""
    prefix = alice_id[:12]
    renames: dict = {}
    hits: dict = {}
    lock = threading.Lock()
    since = time.time() - 1
    deadline = time.monotonic() + RACE_SECONDS
    threads = [threading.Thread(target=rename_loop, args=(stack, bob_id, prefix, renames))]
    for offset in (0, len(ops) // 2):
        rotated = ops[offset:] + ops[:offset]
        args = (stack, bob_id, rotated, deadline, hits, lock)
        threads.append(threading.Thread(target=attack_loop, args=args))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(RACE_SECONDS + 120)
    log = events(stack, since, time.time() + 1)
    # Not vacuous: the name flipped, and operations by that name did land on bob's container.
    assert renames.get("ok", 0) > 2, renames
    assert sum(ok_count for ok_count, _ in hits.values()) > 0, hits
    assert touched(log, bob_id), hits
    return renames, hits, log


def test_name_race_never_reaches_alices_container(race):
    """cp in and out, kill, exec, commit and stop by the flipping name: none reaches alice."""
    stack, alice_id, bob_id, source = race
    ops = [op for op in attack_ops(alice_id[:12], source) if op[0] != "network_connect"]
    _, _, log = run_race(stack, alice_id, bob_id, ops)

    assert touched(log, alice_id) == [], touched(log, alice_id)
    state = json.loads(ok(stack.docker("inspect", alice_id, user=ALICE)))[0]
    assert state["State"]["Running"] and state["State"]["Pid"] > 0, state["State"]
    assert state["Name"] == "/dt-victim"
    diff = ok(stack.docker("diff", alice_id, user=ALICE))
    assert "dt-pwned" not in diff and "dt-exec-ran" not in diff, diff
    listing = ok(stack.docker("exec", alice_id, "ls", "-a", "/tmp", user=ALICE))
    assert "dt-pwned" not in listing and "dt-exec-ran" not in listing, listing
    images = ok(stack.docker("images", "-aq", "--no-trunc", direct=True)).split()
    parents = {
        json.loads(ok(stack.docker("inspect", i, direct=True)))[0]["Container"] for i in images
    }
    assert alice_id not in parents


def test_name_race_network_connect_never_reaches_alices_container(race):
    """``docker network connect NET <flipping name>``: alice's container joins no network."""
    stack, alice_id, bob_id, source = race
    ops = [op for op in attack_ops(alice_id[:12], source) if op[0] == "network_connect"]
    _, _, log = run_race(stack, alice_id, bob_id, ops)

    assert touched(log, alice_id) == [], touched(log, alice_id)
    state = json.loads(ok(stack.docker("inspect", alice_id, user=ALICE)))[0]
    assert NETWORK not in state["NetworkSettings"]["Networks"], state["NetworkSettings"]
