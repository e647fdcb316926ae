"""Plain docker commands through the gateway, as real Unix users: what they get and are refused."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from tests.stack.ds01 import IMAGE, user_python

pytestmark = [pytest.mark.docker, pytest.mark.e2e]

ALICE, BOB, RITA, DANA = "e2e-alice", "e2e-bob", "e2e-rita", "e2e-dana"


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (
        f"rc={result.returncode}\nstdout={result.stdout}\nstderr={result.stderr}"
    )
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode != 0, result.stdout
    assert message in result.stderr, result.stderr


def inspect(stack, name: str) -> dict:
    return json.loads(ok(stack.docker("inspect", name, direct=True)))[0]


def test_run_is_governed_transparently(clean):
    """`docker run` works unchanged and the container carries its owner, cgroup and limits."""
    assert (
        ok(clean.docker("run", "--name", "a1", IMAGE, "echo", "hello", user=ALICE)).strip()
        == "hello"
    )
    info = inspect(clean, "a1")
    labels = info["Config"]["Labels"]
    assert labels["ds01.user"] == ALICE and labels["ds01.group"] == "students"
    assert labels["ds01.uid"] == str(clean_uid(ALICE))
    assert info["HostConfig"]["CgroupParent"] == f"/ds01/{ALICE}"
    assert info["HostConfig"]["Memory"] == 512 * 2**20
    assert info["HostConfig"]["NanoCpus"] == 2 * 10**9
    assert info["HostConfig"]["PidsLimit"] == 512
    assert "NVIDIA_VISIBLE_DEVICES=void" in info["Config"]["Env"]


def clean_uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid


def test_denial_reads_like_a_docker_error(clean):
    """A refused flag comes back as Docker's own error line with the reason and the fix."""
    result = clean.docker("run", "--rm", "--privileged", IMAGE, "true", user=ALICE)
    refused(
        result,
        "docker: Error response from daemon: ds01: --privileged is not allowed for "
        "group students. To fix: run without --privileged",
    )


def test_stdin_piped_and_closed(clean):
    """`docker run -i` relays stdin and its end (the hijacked half-close path)."""
    out = ok(
        clean.docker("run", "-i", "--rm", IMAGE, "cat", user=ALICE, input="through the gateway\n")
    )
    assert out == "through the gateway\n"


def in_a_terminal(stack, command: str, typed: str) -> str:
    """Run a docker command as alice under a real pseudo-terminal (script(1)), typing ``typed``."""
    result = subprocess.run(
        [
            "runuser",
            "-u",
            ALICE,
            "--",
            "script",
            "-qec",
            f"DOCKER_HOST={stack.gateway} {command}",
            "/dev/null",
        ],
        input=typed,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.stdout + result.stderr


def test_run_it_with_a_pseudo_terminal(clean):
    """`docker run -it` under a real pty (script(1)) echoes what is typed and exits."""
    out = in_a_terminal(
        clean, f"docker run -it --rm {IMAGE} sh -c 'read x; echo got-$x'", "hello\n"
    )
    assert "got-hello" in out


def test_exec_with_stdin_closed_mid_way(clean):
    """`docker exec -i` sees EOF when the client closes stdin, and its output arrives."""
    ok(clean.docker("run", "-d", "--name", "ex", IMAGE, "sleep", "300", user=ALICE))
    out = ok(
        clean.docker(
            "exec", "-i", "ex", "sh", "-c", "cat; echo done", user=ALICE, input="line1\nline2\n"
        )
    )
    assert out == "line1\nline2\ndone\n"


def test_exec_it_with_a_pseudo_terminal(clean):
    """`docker exec -it` works through the gateway under a pty."""
    ok(clean.docker("run", "-d", "--name", "exit", IMAGE, "sleep", "300", user=ALICE))
    assert "exec-hi" in in_a_terminal(
        clean, "docker exec -it exit sh -c 'read x; echo exec-$x'", "hi\n"
    )


def test_attach_and_logs_follow(clean):
    """`docker attach` and `docker logs -f` stream through the gateway until the container ends."""
    ok(
        clean.docker(
            "run",
            "-d",
            "--name",
            "lg",
            IMAGE,
            "sh",
            "-c",
            "for i in 1 2 3; do echo $i; sleep 1; done",
            user=ALICE,
        )
    )
    logs = ok(clean.docker("logs", "-f", "lg", user=ALICE))
    assert logs.split() == ["1", "2", "3"]
    ok(
        clean.docker(
            "run", "-d", "--name", "at", IMAGE, "sh", "-c", "sleep 1; echo attached", user=ALICE
        )
    )
    assert "attached" in ok(clean.docker("attach", "at", user=ALICE))


def test_cp_both_ways(clean, tmp_path):
    """`docker cp` into and out of a container is relayed byte for byte."""
    ok(clean.docker("run", "-d", "--name", "cp", IMAGE, "sleep", "300", user=ALICE))
    home = f"/home/{ALICE}"
    payload = os.urandom(300_000)
    src = f"{home}/payload.bin"
    with open(src, "wb") as f:
        f.write(payload)
    os.chmod(src, 0o644)
    ok(clean.docker("cp", src, "cp:/tmp/payload.bin", user=ALICE))
    ok(clean.docker("cp", "cp:/tmp/payload.bin", f"{home}/back.bin", user=ALICE))
    with open(f"{home}/back.bin", "rb") as f:
        assert f.read() == payload


def test_build_with_a_context(clean):
    """`docker build` streams its context through the gateway (classic builder)."""
    ctx = f"/home/{ALICE}/ctx"
    subprocess.run(["runuser", "-u", ALICE, "--", "mkdir", "-p", ctx], check=True)
    subprocess.run(
        [
            "runuser",
            "-u",
            ALICE,
            "--",
            "sh",
            "-c",
            f"printf 'FROM {IMAGE}\\nCOPY data.txt /data.txt\\nRUN cat /data.txt\\n' > {ctx}/Dockerfile;"
            f" head -c 2000000 /dev/urandom > {ctx}/data.txt",
        ],
        check=True,
    )
    result = subprocess.run(
        [
            "runuser",
            "-u",
            ALICE,
            "--",
            "env",
            f"DOCKER_HOST={clean.gateway}",
            "DOCKER_BUILDKIT=0",
            "docker",
            "build",
            "-q",
            "-t",
            f"{ALICE}/built:1",
            ctx,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (
        ok(
            clean.docker("run", "--rm", f"{ALICE}/built:1", "wc", "-c", "/data.txt", user=ALICE)
        ).split()[0]
        == "2000000"
    )


def test_ps_shows_only_your_own_containers(clean):
    """Two users see only their own containers; an admin sees both."""
    ok(clean.docker("run", "-d", "--name", "mine-a", IMAGE, "sleep", "300", user=ALICE))
    ok(clean.docker("run", "-d", "--name", "mine-b", IMAGE, "sleep", "300", user=BOB))

    def names(user: str) -> set[str]:
        return set(ok(clean.docker("ps", "-a", "--format", "{{.Names}}", user=user)).split())

    assert names(ALICE) == {"mine-a"}
    assert names(BOB) == {"mine-b"}
    assert {"mine-a", "mine-b"} <= names(DANA)


def test_someone_elses_container_does_not_exist(clean):
    """Every action on another user's container answers like a missing one."""
    ok(clean.docker("run", "-d", "--name", "victim", IMAGE, "sleep", "300", user=ALICE))
    for args in (
        ("stop", "victim"),
        ("rm", "-f", "victim"),
        ("exec", "victim", "true"),
        ("logs", "victim"),
        ("inspect", "victim"),
        ("kill", "victim"),
    ):
        result = clean.docker(*args, user=BOB)
        assert "No such" in result.stderr, (args, result.stderr)  # `rm -f` exits 0 on "missing"
    assert inspect(clean, "victim")["State"]["Running"]


def test_admin_acts_on_anyone_and_is_audited(clean):
    """An admin may stop another user's container, and the audit log records it."""
    ok(clean.docker("run", "-d", "--name", "adm", IMAGE, "sleep", "300", user=ALICE))
    ok(clean.docker("inspect", "adm", user=DANA))
    ok(clean.docker("stop", "-t", "0", "adm", user=DANA))
    events = [
        e for e in clean.audit_events() if e.get("event") == "admin" and e.get("user") == DANA
    ]
    assert any("/stop" in (e.get("endpoint") or "") for e in events), events
    # inspect is decided on dockerd's answer (no lookup first); it is audited all the same
    assert any(
        e.get("endpoint") == "GET /containers/adm/json" and e.get("container") for e in events
    ), events


def test_inspect_shows_your_own_objects_and_no_one_elses(clean):
    """Inspect is forwarded and decided on the object dockerd returns (its owner label)."""
    ok(clean.docker("run", "-d", "--name", "seen", IMAGE, "sleep", "300", user=ALICE))
    ok(clean.docker("volume", "create", "e2e-vol-seen", user=ALICE))
    [mine] = json.loads(ok(clean.docker("inspect", "seen", user=ALICE)))
    assert mine["Config"]["Labels"]["ds01.user"] == ALICE
    [vol] = json.loads(ok(clean.docker("volume", "inspect", "e2e-vol-seen", user=ALICE)))
    assert vol["Labels"]["ds01.user"] == ALICE
    for args in (("inspect", "seen"), ("container", "inspect", mine["Id"][:12])):
        refused(clean.docker(*args, user=BOB), "No such")
    refused(clean.docker("volume", "inspect", "e2e-vol-seen", user=BOB), "No such volume")
    # nothing of the object leaks into the refusal
    assert mine["Id"] not in clean.docker("inspect", "seen", user=BOB).stdout
    ok(clean.docker("volume", "rm", "e2e-vol-seen", user=ALICE))


def test_other_users_volume_is_invisible(clean):
    """Volumes are owned: named volumes are created for their user and hidden from others."""
    ok(clean.docker("run", "--rm", "-v", "e2e-vol-a:/data", IMAGE, "true", user=ALICE))
    assert "e2e-vol-a" in ok(clean.docker("volume", "ls", "-q", user=ALICE))
    assert "e2e-vol-a" not in ok(clean.docker("volume", "ls", "-q", user=BOB))
    refused(
        clean.docker("run", "--rm", "-v", "e2e-vol-a:/data", IMAGE, "true", user=BOB),
        "No such volume",
    )
    refused(clean.docker("volume", "rm", "e2e-vol-a", user=BOB), "No such volume")
    ok(clean.docker("volume", "rm", "e2e-vol-a", user=ALICE))


def test_docker_sdk_is_governed(clean, users):
    """docker-py through the gateway gets the same rewrite and the same refusals."""
    code = (
        "import docker,sys\n"
        f"c = docker.DockerClient(base_url='{clean.gateway}')\n"
        f"print(c.containers.run('{IMAGE}', 'echo sdk', remove=True).decode().strip())\n"
        "try:\n"
        f"    c.containers.run('{IMAGE}', 'true', privileged=True, remove=True)\n"
        "except docker.errors.APIError as e:\n"
        "    print('DENIED', e.explanation)\n"
    )
    result = clean.python(code, user=ALICE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "sdk"
    assert "DENIED ds01: --privileged is not allowed" in result.stdout


def test_a_process_inside_a_container_is_its_owner(clean, users):
    """A docker client inside alice's container speaks as the uid it runs as: alice, not root.

    Identity is SO_PEERCRED's uid only (no container-of-pid lookup a user could forge with a
    cgroup of their own); DS01 runs alice's containers as her uid, so that uid is hers."""
    ok(clean.docker("run", "-d", "--name", "bobs", IMAGE, "sleep", "300", user=BOB))
    ok(clean.docker("run", "-d", "--name", "alices", IMAGE, "sleep", "300", user=ALICE))
    uid = str(clean_uid(ALICE))
    docker_cli = subprocess.run(
        ["sh", "-c", "command -v docker"], capture_output=True, text=True
    ).stdout.strip()
    # Only root can mount the gateway socket into a container: it does so directly, for alice.
    ok(
        clean.docker(
            "run",
            "-d",
            "--name",
            "inner",
            "--label",
            f"ds01.user={ALICE}",
            "--label",
            f"ds01.uid={uid}",
            "--user",
            f"{uid}:{uid}",
            "-v",
            f"{clean.gateway_socket}:/var/run/docker.sock",
            "-v",
            f"{docker_cli}:/usr/bin/docker:ro",
            IMAGE,
            "sleep",
            "300",
            direct=True,
        )
    )
    out = ok(clean.docker("exec", "inner", "docker", "ps", "--format", "{{.Names}}", direct=True))
    assert "alices" in out.split() and "bobs" not in out.split(), out


def test_client_headers_cannot_claim_an_identity(clean):
    """X-Ds01-* headers from a client are dropped: a forged token or user changes nothing."""
    script = (
        "import http.client,socket,json\n"
        "class C(http.client.HTTPConnection):\n"
        "    def connect(self):\n"
        "        self.sock=socket.socket(socket.AF_UNIX); self.sock.connect(%r)\n"
        "c=C('x')\n"
        "c.request('GET','/v1.41/containers/json?all=1',\n"
        "          headers={'X-Ds01-Token':'forged','X-Ds01-User':'root'})\n"
        "r=c.getresponse(); print(r.status, len(json.loads(r.read())))\n"
    ).replace("%r", repr(str(clean.gateway_socket)))
    ok(clean.docker("run", "-d", "--name", "hidden", IMAGE, "sleep", "300", user=BOB))
    result = clean.python(script, user=ALICE)
    assert result.stdout.split() == ["200", "0"], result.stdout + result.stderr


def test_ds01_limits_and_ps_as_the_user(clean):
    """`ds01 limits` and `ds01 ps` know who is asking from the socket alone."""
    ok(clean.docker("run", "-d", "--name", "lim", IMAGE, "sleep", "300", user=ALICE))
    limits = json.loads(ok(clean.ds01("limits", "--json", user=ALICE)))
    assert limits["user"] == ALICE and limits["group"] == "students"
    assert limits["usage"]["containers"] == 1
    ps = json.loads(ok(clean.ds01("ps", "--json", user=ALICE)))
    assert [c["name"] for c in ps["containers"]] == ["lim"]
    assert "for admins" in clean.ds01("users", user=ALICE).stderr
    assert ALICE in ok(clean.ds01("users", user=DANA))


def test_events_show_only_your_own_containers(clean):
    """`docker events` through the gateway carries only the caller's container events."""
    since = str(int(time.time()) - 1)
    ok(clean.docker("run", "--rm", "--name", "ev-a", IMAGE, "true", user=ALICE))
    ok(clean.docker("run", "--rm", "--name", "ev-b", IMAGE, "true", user=BOB))
    until = str(int(time.time()) + 1)
    events = ok(
        clean.docker(
            "events",
            "--since",
            since,
            "--until",
            until,
            "--format",
            "{{.Actor.Attributes.name}}",
            user=ALICE,
        )
    ).split()
    assert "ev-a" in events and "ev-b" not in events


def test_save_load_and_export_stream_through(clean, tmp_path):
    """`docker save | docker load` and `docker export` relay their tar streams."""
    home = f"/home/{ALICE}"
    ok(clean.docker("save", "-o", f"{home}/img.tar", IMAGE, user=ALICE))
    ok(clean.docker("tag", IMAGE, f"{ALICE}/loaded:1", user=ALICE))
    ok(clean.docker("rmi", f"{ALICE}/loaded:1", user=ALICE))
    # docker load is for admins (the names it writes are inside the tar): dana loads
    ok(clean.docker("save", "-o", f"/home/{DANA}/img.tar", IMAGE, user=DANA))
    assert "Loaded image" in ok(clean.docker("load", "-i", f"/home/{DANA}/img.tar", user=DANA))
    ok(clean.docker("create", "--name", "exp", IMAGE, "true", user=ALICE))
    ok(clean.docker("export", "-o", f"{home}/exp.tar", "exp", user=ALICE))
    assert os.path.getsize(f"{home}/exp.tar") > 500_000


def test_users_parent_cgroup_carries_the_aggregate_limits(clean):
    """The first create makes /ds01/<user> with the policy's aggregate limits, read back from
    the kernel; `ds01 slices` shows them to the user."""
    from ds01d.host.cgroups import CgroupfsManager

    ok(clean.docker("run", "-d", "--name", "agg", IMAGE, "sleep", "300", user=ALICE))
    kernel = CgroupfsManager().limits(ALICE)
    assert kernel["memory.limit_in_bytes"] == str(2 * 2**30) and kernel["pids.max"] == "1000"
    assert kernel["cpu.cfs_quota_us"] == "200000"
    slices = json.loads(ok(clean.ds01("slices", "--json", user=ALICE)))["slices"]
    assert [s["user"] for s in slices] == [ALICE]
    assert slices[0]["usage"]["pids"] >= 1


def test_ds01_ps_shows_runtime_and_the_next_stop(clean):
    """After a lifecycle sample, `ds01 ps` shows each container's runtime and idle time."""
    ok(clean.docker("run", "-d", "--name", "life", IMAGE, "sleep", "300", user=ALICE))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        rows = json.loads(ok(clean.ds01("ps", "--json", user=ALICE)))["containers"]
        life = rows[0].get("lifecycle") or {}
        if life.get("runtime_seconds") is not None:
            break
        time.sleep(0.5)
    assert life["runtime_seconds"] >= 0 and life["idle_seconds"] is not None
    assert "RUNTIME" in ok(clean.ds01("ps", user=ALICE))


def test_policy_change_updates_running_users_cgroup(clean):
    """A reloaded policy rewrites the user's aggregate limits in the kernel; containers keep running."""
    from ds01d.host.cgroups import CgroupfsManager

    from .conftest import POLICY

    ok(clean.docker("run", "-d", "--name", "reload", IMAGE, "sleep", "300", user=ALICE))
    clean.set_policy(
        POLICY.replace(
            "aggregate: {cpus: 2, memory: 2g, pids: 1000}",
            "aggregate: {cpus: 2, memory: 3g, pids: 900}",
        )
    )
    try:
        deadline = time.monotonic() + 10
        while CgroupfsManager().limits(ALICE)["pids.max"] != "900" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert CgroupfsManager().limits(ALICE)["memory.limit_in_bytes"] == str(3 * 2**30)
        assert inspect(clean, "reload")["State"]["Running"]
    finally:
        clean.set_policy(POLICY)


def test_ds01_limits_lists_each_containers_lifecycle(clean):
    """`ds01 limits` carries each container's idle time and next stop, as the lifecycle sees it."""
    ok(clean.docker("run", "-d", "--name", "limlife", IMAGE, "sleep", "300", user=ALICE))
    deadline = time.monotonic() + 15
    rows: list = []
    while not rows and time.monotonic() < deadline:
        rows = json.loads(ok(clean.ds01("limits", "--json", user=ALICE)))["lifecycle"]
        time.sleep(0.5)
    assert rows and rows[0]["name"] == "limlife" and rows[0]["runtime_seconds"] is not None


def test_ping_through_the_gateway_answers_as_dockerd_does(clean):
    """The gateway answers pings from dockerd's own recent answer (ds01d/ping.py): the same
    status, body and description a client negotiates its API version from."""
    script = (
        "import http.client,socket,sys\n"
        "class C(http.client.HTTPConnection):\n"
        "    def connect(self):\n"
        "        self.sock=socket.socket(socket.AF_UNIX); self.sock.connect(sys.argv[1])\n"
        "for path in sys.argv[2:]:\n"
        "    c=C('x')\n"
        "    for method in ('HEAD','GET','HEAD'):\n"
        "        c.request(method,path); r=c.getresponse(); body=r.read()\n"
        "        print(method, r.status, body, r.getheader('Api-Version'), r.getheader('Ostype'),\n"
        "              r.getheader('Docker-Experimental'), r.getheader('Content-Length'))\n"
    )
    paths = ["/_ping", "/v1.41/_ping"]
    direct = ok(_ping_lines(script, str(clean.dockerd.socket_path), paths, user=None))
    through = ok(_ping_lines(script, str(clean.gateway_socket), paths, user=ALICE))
    assert through == direct and direct.count(" 200 ") == 6, through


def _ping_lines(script: str, sock: str, paths: list[str], user: str | None):
    cmd = [user_python(), "-c", script, sock, *paths]
    if user is not None:
        cmd = ["runuser", "-u", user, "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)
