"""Root in a container is never power on the host (issue 10), tried as a real user would.

Each attack runs as a real Unix user through the gateway of a real ds01d in front of a private
dockerd, and each test looks at the host afterwards: no file in the user's home that carries
more privilege than the user has, no device node, no host path mounted other than the one
checked, nothing read or written that the user could not read or write as themselves. A
refusal alone is not enough: the attacks are written so that a silent pass would show on disk.

The attacker is a dedicated user (e2e-mallory, a student for the length of this module) so the
walk of their home sees only what these tests put there.
"""

from __future__ import annotations

import grp
import io
import json
import os
import pwd
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.harness.users import ensure_user
from tests.stack.ds01 import IMAGE, Ds01Stack
from tests.stack.rawhttp import as_user, request

from .conftest import POLICY

pytestmark = [pytest.mark.docker, pytest.mark.e2e]

MAL, ALICE, BOB, DANA = "e2e-mallory", "e2e-alice", "e2e-bob", "e2e-dana"
HOME = f"/home/{MAL}"
SHARED = "/srv/ds01test-shared"
TEAM = "ds01-e2e-team"  # a supplementary Unix group of mallory's
NEVER_STARTED = "0001-01-01T00:00:00Z"
STUDENTS = "members: [e2e-alice, e2e-bob]"
BASE_POLICY = POLICY.replace(STUDENTS, f"members: [e2e-alice, e2e-bob, {MAL}]")


# --- helpers -------------------------------------------------------------------------------


@contextmanager
def mallory_policy(stack: Ds01Stack, entry: str) -> Iterator[None]:
    """Give mallory a ``users:`` entry (YAML lines, 4-space indented) for the block's length."""
    stack.load_policy(f"{BASE_POLICY}users:\n  {MAL}:\n{entry}")
    try:
        yield
    finally:
        stack.load_policy(BASE_POLICY)


def sh(command: str, user: str = MAL) -> subprocess.CompletedProcess[str]:
    """A shell command on the host as ``user`` (what they can do without Docker)."""
    return subprocess.run(
        ["runuser", "-u", user, "--", "sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/tmp",
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (
        f"rc={result.returncode}\nstdout={result.stdout}\nstderr={result.stderr}"
    )
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], fragment: str = "") -> None:
    """Refused by DS01 with a reason and a fix (not by the CLI, not by dockerd)."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "ds01: " in result.stderr and "To fix:" in result.stderr, result.stderr
    assert fragment in result.stderr, result.stderr


def refused_raw(status: int, answer: dict, statuses: tuple[int, ...] = (403,)) -> None:
    message = answer.get("message", "")
    assert status in statuses, (status, answer)
    assert message.startswith("ds01: ") and "To fix:" in message, answer


def inspect(stack: Ds01Stack, name: str) -> dict:
    return json.loads(ok(stack.docker("inspect", name, direct=True)))[0]


def bind_sources(info: dict) -> list[str]:
    """Host sources of a container's binds, whether given as ``Binds`` or as ``Mounts``."""
    host = info["HostConfig"]
    binds = [b.split(":")[0] for b in host.get("Binds") or []]
    return binds + [m["Source"] for m in host.get("Mounts") or [] if m.get("Type") == "bind"]


def containers(stack: Ds01Stack) -> list[str]:
    return stack.docker("ps", "-aq", "--no-trunc", direct=True).stdout.split()


def ids(user: str) -> tuple[int, int, set[int]]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid, set(os.getgrouplist(user, entry.pw_gid))


def privileged_leftovers(root: str, user: str) -> list[str]:
    """Everything under ``root`` that carries more than ``user``'s own privilege: a file owned
    by someone else, a device node, a setuid/setgid bit for another uid or a group they lack."""
    uid, _, gids = ids(user)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            mode = st.st_mode
            if st.st_uid != uid:
                found.append(f"{path}: owned by uid {st.st_uid}")
            if stat.S_ISBLK(mode) or stat.S_ISCHR(mode):
                found.append(f"{path}: device node")
            if mode & stat.S_ISUID and st.st_uid != uid:
                found.append(f"{path}: setuid for uid {st.st_uid}")
            if mode & stat.S_ISGID and st.st_gid not in gids and not stat.S_ISDIR(mode):
                found.append(f"{path}: setgid for gid {st.st_gid}")
    return found


def wipe(path: str) -> None:
    """Empty a directory as root (a failed run may have left root-owned files in it)."""
    for name in os.listdir(path):
        full = os.path.join(path, name)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full)
        else:
            os.unlink(full)


def mal_create(stack: Ds01Stack, *args: str) -> str:
    """`docker create` as mallory; the new container's id."""
    return ok(stack.docker("create", *args, user=MAL)).strip()


def api(user: str, stack: Ds01Stack, method: str, path: str, body: bytes = b"", **kw):
    return as_user(user, lambda: request(str(stack.gateway_socket), method, path, body, **kw))


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hx(stack, users):
    """The shared stack with mallory as a student; the policy is put back afterwards."""
    ensure_user(MAL, groups=(TEAM,))
    os.chmod(HOME, 0o750)  # a home as most distributions make it
    stack.load_policy(BASE_POLICY)
    try:
        yield stack
    finally:
        stack.load_policy(POLICY)


@pytest.fixture
def mal(hx):
    """An empty home for mallory and no containers, before and after."""
    hx.remove_all_containers()
    wipe(HOME)
    yield hx
    hx.remove_all_containers()
    wipe(HOME)


# --- 1. setuid through a bind mount ----------------------------------------------------------

SETUID_VIA_BIND = "cp /h/bb /h/rb && chown 0:0 /h/rb && chmod 4755 /h/rb"


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["-u", "nobody"],
        ["--cap-add", "ALL"],
        ["--group-add", "0"],
        ["--security-opt", "no-new-privileges=false"],
    ],
    ids=["plain", "user_name", "cap_add_all", "group_add_root", "nnp_off"],
)
def test_setuid_root_file_through_a_bind_mount(mal, extra):
    """The classic: copy a shell into the home, chown it to root and set the setuid bit from a
    container. Whatever the flags, either refused or the container was not root: no setuid-root
    file (no root-owned file at all) is left in the home, and running it gives no root."""
    ok(sh(f"cp /bin/busybox {HOME}/bb"))
    result = mal.docker(
        "run", "--rm", *extra, "-v", f"{HOME}:/h", IMAGE, "sh", "-c", SETUID_VIA_BIND, user=MAL
    )
    assert result.returncode != 0, result.stdout  # chown to root fails (or DS01 refused)
    assert privileged_leftovers(HOME, MAL) == []
    if os.path.exists(f"{HOME}/rb"):
        # Run as `id` (busybox picks the applet by name): not root.
        assert ok(sh(f"ln -s rb {HOME}/id && {HOME}/id -u")).strip() == str(ids(MAL)[0])


def test_container_runs_as_the_caller(mal):
    """`id` inside is the caller's uid, gid and groups; the container carries the rewrite."""
    uid, gid, gids = ids(MAL)
    ok(mal.docker("run", "--name", "who", IMAGE, "sh", "-c", "id -u; id -g; id -G", user=MAL))
    out = ok(mal.docker("logs", "who", direct=True)).split("\n")
    assert out[0] == str(uid) and out[1] == str(gid)
    assert 0 not in {int(g) for g in out[2].split()}
    assert grp.getgrnam(TEAM).gr_gid in {int(g) for g in out[2].split()}  # her groups come along
    host = inspect(mal, "who")
    assert host["Config"]["User"] == f"{uid}:{gid}"
    assert any(opt.startswith("no-new-privileges") for opt in host["HostConfig"]["SecurityOpt"])
    assert {int(g) for g in host["HostConfig"]["GroupAdd"] or []} <= gids


def test_a_name_other_than_root_runs_as_the_caller(mal):
    """`-u nobody` (a name the image may map to anything) becomes the caller's uid:gid."""
    uid, gid, _ = ids(MAL)
    out = ok(mal.docker("run", "--rm", "-u", "nobody", IMAGE, "sh", "-c", "id -u; id -g", user=MAL))
    assert out.split() == [str(uid), str(gid)]


@pytest.mark.parametrize(
    "who", ["root", "0", "00", "0:0", "1", "root:root", "65534", ":0", "OWN:0", "OWN:root"]
)
def test_root_or_another_uid_is_refused(mal, who):
    """`-u root`, `-u 0`, another numeric uid, one's own uid with root's group: refused."""
    who = who.replace("OWN", str(ids(MAL)[0]))
    refused(mal.docker("run", "--rm", "-u", who, IMAGE, "id", "-u", user=MAL))
    assert containers(mal) == []


@pytest.mark.parametrize("who", ["nobody:0", "nobody:root"])
def test_roots_group_is_never_given(mal, who):
    """A name with root's group: refused, or run as the caller without group 0."""
    result = mal.docker("run", "--rm", "-u", who, IMAGE, "sh", "-c", "id -u; id -G", user=MAL)
    if result.returncode != 0:
        refused(result)
        return
    uid, groups = result.stdout.split("\n", 1)
    assert uid == str(ids(MAL)[0]) and "0" not in groups.split()


@pytest.mark.parametrize("who", ["0", "root", "0:0", "1"])
def test_exec_as_root_is_refused(mal, who):
    """`docker exec -u 0` / `-u root` on one's own running container: refused."""
    ok(mal.docker("run", "-d", "--name", "ex", IMAGE, "sleep", "300", user=MAL))
    refused(mal.docker("exec", "-u", who, "ex", "id", "-u", user=MAL))


def test_plain_exec_runs_as_the_caller(mal):
    ok(mal.docker("run", "-d", "--name", "ex", IMAGE, "sleep", "300", user=MAL))
    assert ok(mal.docker("exec", "ex", "id", "-u", user=MAL)).strip() == str(ids(MAL)[0])
    # A privileged exec is no way round it: refused, or still the caller without root's power.
    result = mal.docker("exec", "--privileged", "ex", "sh", "-c", "id -u; chown 0 /tmp", user=MAL)
    if result.returncode == 0 or "ds01: " not in result.stderr:
        assert result.stdout.split()[:1] == [str(ids(MAL)[0])], result.stdout + result.stderr
        assert result.returncode != 0  # the chown to root failed


def test_admin_keeps_root(mal):
    """Admins keep full power: root inside their container."""
    assert ok(mal.docker("run", "--rm", "-u", "0", IMAGE, "id", "-u", user=DANA)).strip() == "0"


# --- 2. device nodes -----------------------------------------------------------------------


@pytest.mark.parametrize("extra", [[], ["--cap-add", "MKNOD"], ["--cap-add", "ALL"]])
def test_mknod_through_a_bind_mount(mal, extra):
    """A block node of the disk and a char node made through the bind: none reaches the home."""
    script = "busybox mknod /h/disk b 8 0; busybox mknod /h/mem c 1 1; busybox mkfifo /h/ok"
    mal.docker("run", "--rm", *extra, "-v", f"{HOME}:/h", IMAGE, "sh", "-c", script, user=MAL)
    assert privileged_leftovers(HOME, MAL) == []
    assert not os.path.exists(f"{HOME}/disk") and not os.path.exists(f"{HOME}/mem")


# --- 3. docker cp --------------------------------------------------------------------------


def setuid_tar() -> bytes:
    """A tar holding a setuid-root file (dockerd extracts keeping owner and mode)."""
    data = b"#!/bin/sh -p\nexec /bin/sh -p\n"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("rootsh")
        info.size, info.mode, info.uid, info.gid = len(data), 0o4755, 0, 0
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_cp_into_a_created_container_with_a_bind_is_refused(mal):
    """`docker cp` (PUT archive) of a setuid-root file into a never-started container whose
    bind is the home: refused; no such file appears. The CLI's own copy (root-owned) too."""
    cid = mal_create(mal, "-v", f"{HOME}:/h", IMAGE, "true")
    status, answer = api(
        MAL,
        mal,
        "PUT",
        f"/v1.41/containers/{cid}/archive?path=/h",
        setuid_tar(),
        headers={"Content-Type": "application/x-tar"},
    )
    refused_raw(status, answer)
    assert "mounted folder" in answer["message"] or "on the host" in answer["message"]
    ok(sh(f"mkdir {HOME}/src && echo hi > {HOME}/src/f"))
    refused(mal.docker("cp", f"{HOME}/src/f", f"{cid}:/h/copied", user=MAL))
    assert not os.path.exists(f"{HOME}/rootsh") and not os.path.exists(f"{HOME}/copied")
    assert privileged_leftovers(HOME, MAL) == []


def test_cp_out_of_a_container_with_a_bind_is_refused(mal):
    """Copying out (HEAD and GET archive) of such a container is refused too: dockerd reads as
    root, so it would read what the user cannot."""
    cid = mal_create(mal, "-v", f"{HOME}:/h", IMAGE, "true")
    target = f"{HOME}/out"
    refused(mal.docker("cp", f"{cid}:/etc/passwd", target, user=MAL))
    assert not os.path.exists(target)
    for method in ("HEAD", "GET"):
        status, answer = api(MAL, mal, method, f"/v1.41/containers/{cid}/archive?path=/h")
        assert status == 403, (method, status, answer)


def test_cp_into_a_container_that_inherits_a_bind_is_refused(mal):
    """`--volumes-from` a container that binds the home: the second container mounts the same
    host folder, so `docker cp` into it is refused all the same; no root-owned file appears."""
    ok(sh(f"mkdir {HOME}/x"))
    first = mal_create(mal, "-v", f"{HOME}/x:/w", IMAGE, "true")
    second = mal_create(mal, "--volumes-from", first, IMAGE, "true")
    refused(mal.docker("cp", "/etc/hostname", f"{second}:/w/copied", user=MAL))
    status, answer = api(
        MAL,
        mal,
        "PUT",
        f"/v1.41/containers/{second}/archive?path=/w",
        setuid_tar(),
        headers={"Content-Type": "application/x-tar"},
    )
    refused_raw(status, answer)
    assert privileged_leftovers(HOME, MAL) == []


def test_cp_without_a_host_bind_still_works(mal):
    """The rule is about host binds: a container without one still copies both ways."""
    ok(mal.docker("create", "--name", "plain", IMAGE, "true", user=MAL))
    ok(sh(f"echo from-host > {HOME}/in"))
    ok(mal.docker("cp", f"{HOME}/in", "plain:/tmp/in", user=MAL))
    ok(mal.docker("cp", "plain:/tmp/in", f"{HOME}/back", user=MAL))
    assert Path(f"{HOME}/back").read_text() == "from-host\n"


# --- 4. a shared prefix --------------------------------------------------------------------


@pytest.fixture
def shared():
    """/srv/ds01test-shared: bob's 0600 file and 0700 folder in a root-owned 0755 directory."""
    shutil.rmtree(SHARED, ignore_errors=True)
    os.makedirs(f"{SHARED}/bobdir")
    os.chmod(SHARED, 0o755)
    with open(f"{SHARED}/bob-secret", "w") as f:
        f.write("bob's secret\n")
    uid, gid, _ = ids(BOB)
    for path, mode in ((f"{SHARED}/bob-secret", 0o600), (f"{SHARED}/bobdir", 0o700)):
        os.chown(path, uid, gid)
        os.chmod(path, mode)
    with open(f"{SHARED}/team-notes", "w") as f:
        f.write("team notes\n")
    os.chown(f"{SHARED}/team-notes", 0, grp.getgrnam(TEAM).gr_gid)
    os.chmod(f"{SHARED}/team-notes", 0o640)
    yield SHARED
    shutil.rmtree(SHARED, ignore_errors=True)


def test_shared_prefix_gives_no_access_to_other_users_files(mal, shared):
    """With a shared bind prefix, the container reads and writes only what mallory could."""
    entry = f'    bind_mounts: ["{{home}}", "{SHARED}"]\n'
    with mallory_policy(mal, entry):
        script = "cat /s/bob-secret; touch /s/bobdir/pwn; touch /s/pwn; cat /s/team-notes"
        result = mal.docker(
            "run", "--rm", "-v", f"{SHARED}:/s", IMAGE, "sh", "-c", script, user=MAL
        )
        assert "bob's secret" not in result.stdout + result.stderr
        assert "team notes" in result.stdout  # what her Unix groups let her read, she reads
        # The other user's folder bound on its own: refused, or unreadable all the same.
        direct = mal.docker(
            "run", "--rm", "-v", f"{SHARED}/bobdir:/b", IMAGE, "sh", "-c", "touch /b/pwn2",
            user=MAL,
        )  # fmt: skip
        assert direct.returncode != 0
        cid = mal_create(mal, "-v", f"{SHARED}:/s", IMAGE, "true")
        out = mal.docker("cp", f"{cid}:/s/bob-secret", "-", user=MAL)
        assert out.returncode != 0 and "bob's secret" not in out.stdout
    assert sorted(os.listdir(SHARED)) == ["bob-secret", "bobdir", "team-notes"]
    assert os.listdir(f"{SHARED}/bobdir") == []


# --- 5. the bind source swapped for a symlink ------------------------------------------------


def never_started(stack: Ds01Stack, cid: str) -> bool:
    state = inspect(stack, cid)["State"]
    return not state["Running"] and state["StartedAt"] == NEVER_STARTED


PROBE = "echo pwned > /w/ds01-swap-probe 2>/dev/null; sleep 300"
ETC_PROBE = "/etc/ds01-swap-probe"


@pytest.fixture
def etc_probe():
    """Where a swap that worked would write; removed after, so a failing run leaves no trace."""
    if os.path.exists(ETC_PROBE):
        os.unlink(ETC_PROBE)
    yield ETC_PROBE
    if os.path.exists(ETC_PROBE):
        os.unlink(ETC_PROBE)


@pytest.mark.parametrize(
    "swap",
    [
        ("x", "x", "/etc"),  # the bind source itself
        ("p/etc", "p", "/"),  # a parent component, so that ~/p/etc is /etc
        ("x", "x", "STACK"),  # the directory of the gateway's and plugin's sockets
    ],
    ids=["source", "parent", "socket_dir"],
)
def test_symlink_swap_between_create_and_start(mal, etc_probe, swap):
    """Create with ~/x, replace ~/x (or a parent) by a symlink elsewhere, start: refused, and
    the container never started, so it never mounted the symlink's target."""
    bind, replaced, target = swap
    target = str(mal.base) if target == "STACK" else target
    ok(sh(f"mkdir -p {HOME}/{bind}"))
    cid = mal_create(mal, "-v", f"{HOME}/{bind}:/w", IMAGE, "sh", "-c", PROBE)
    assert bind_sources(inspect(mal, cid)) == [f"{HOME}/{bind}"]  # the resolved real path
    ok(sh(f"rm -rf {HOME}/{replaced} && ln -s {target} {HOME}/{replaced}"))
    refused(mal.docker("start", cid, user=MAL))
    assert never_started(mal, cid)
    assert not os.path.exists(etc_probe)
    assert not os.path.exists(f"{mal.base}/ds01-swap-probe")


def test_symlink_swap_under_a_mount_flag(mal, etc_probe):
    """The same swap for a bind given with --mount."""
    ok(sh(f"mkdir {HOME}/m"))
    cid = mal_create(
        mal, "--mount", f"type=bind,source={HOME}/m,target=/w", IMAGE, "sh", "-c", PROBE
    )
    ok(sh(f"rmdir {HOME}/m && ln -s /etc {HOME}/m"))
    refused(mal.docker("start", cid, user=MAL))
    assert never_started(mal, cid)
    assert not os.path.exists(etc_probe)


def test_symlink_swap_under_volumes_from(mal, etc_probe):
    """A container that inherits the bind with --volumes-from: dockerd mounts the first
    container's source when the second starts, so the second's start is re-checked too."""
    ok(sh(f"mkdir {HOME}/x"))
    first = mal_create(mal, "-v", f"{HOME}/x:/w", IMAGE, "true")
    inherits = mal_create(mal, "--volumes-from", first, IMAGE, "sh", "-c", PROBE)
    ok(sh(f"rmdir {HOME}/x && ln -s /etc {HOME}/x"))
    refused(mal.docker("start", inherits, user=MAL))
    assert never_started(mal, inherits)
    assert not os.path.exists(etc_probe)


@pytest.mark.parametrize("policy", ["always", "unless-stopped", "on-failure"])
def test_restart_policy_with_an_inherited_bind_is_refused(mal, policy):
    """dockerd restarts on its own, with no request DS01 could re-check: a restart policy is
    refused for a container that inherits a host bind, as for one that has its own."""
    ok(sh(f"mkdir {HOME}/x"))
    first = mal_create(mal, "-v", f"{HOME}/x:/w", IMAGE, "true")
    refused(mal.docker("create", "--restart", policy, "-v", f"{HOME}/x:/v", IMAGE, "true",
                       user=MAL))  # fmt: skip
    refused(
        mal.docker("create", "--restart", policy, "--volumes-from", first, IMAGE, "true", user=MAL)
    )
    second = mal_create(mal, "--volumes-from", first, IMAGE, "true")
    refused(mal.docker("update", "--restart", policy, first, user=MAL))
    refused(mal.docker("update", "--restart", policy, second, user=MAL))
    assert sorted(containers(mal)) == sorted([first, second])
    assert inspect(mal, second)["HostConfig"]["RestartPolicy"]["Name"] in ("", "no")


def test_symlink_swap_before_restart(mal):
    """Started with ~/y; ~/y swapped for a symlink to /etc; restart (and stop+start): refused,
    and the running container still sees the folder it was started with."""
    ok(sh(f"mkdir {HOME}/y && echo mine > {HOME}/y/marker"))
    ok(mal.docker("run", "-d", "--name", "rs", "-v", f"{HOME}/y:/w", IMAGE, "sleep", "300",
                  user=MAL))  # fmt: skip
    started = inspect(mal, "rs")["State"]["StartedAt"]
    ok(sh(f"mv {HOME}/y {HOME}/y.old && ln -s /etc {HOME}/y"))
    refused(mal.docker("restart", "-t", "0", "rs", user=MAL))
    assert inspect(mal, "rs")["State"]["StartedAt"] == started
    seen = ok(mal.docker("exec", "rs", "ls", "/w", user=MAL)).split()
    assert seen == ["marker"]
    ok(mal.docker("stop", "-t", "0", "rs", user=MAL))
    refused(mal.docker("start", "rs", user=MAL))
    assert not inspect(mal, "rs")["State"]["Running"]


def test_restart_of_an_unchanged_bind_still_works(mal):
    ok(sh(f"mkdir {HOME}/z"))
    ok(mal.docker("run", "-d", "--name", "rz", "-v", f"{HOME}/z:/w", IMAGE, "sleep", "300",
                  user=MAL))  # fmt: skip
    ok(mal.docker("restart", "-t", "0", "rz", user=MAL))
    ok(mal.docker("stop", "-t", "0", "rz", user=MAL))
    ok(mal.docker("start", "rz", user=MAL))
    assert inspect(mal, "rz")["State"]["Running"]


# --- 6. published ports --------------------------------------------------------------------


@pytest.mark.parametrize(
    "ports",
    [
        ["-p", "127.0.0.1:1023:80"],
        ["-p", "1023:80"],
        ["-p", "127.0.0.1:1020-1030:80"],
        ["-p", "0.0.0.0:8080:80"],
        ["-p", "[::]:8080:80"],
        ["--expose", "80", "-P"],
    ],
    ids=["low_loopback", "low", "low_range", "public", "public_v6", "publish_all"],
)
def test_low_or_public_port_is_refused(mal, ports):
    refused(mal.docker("create", *ports, IMAGE, "true", user=MAL))
    assert containers(mal) == []


def test_port_without_an_address_is_bound_to_loopback(mal):
    cid = mal_create(mal, "-p", "8080:80", IMAGE, "true")
    bindings = inspect(mal, cid)["HostConfig"]["PortBindings"]["80/tcp"]
    assert bindings == [{"HostIp": "127.0.0.1", "HostPort": "8080"}]


def test_policy_can_allow_low_and_public_ports(mal):
    with mallory_policy(mal, "    allow: [low_ports, public_ports]\n"):
        cid = mal_create(mal, "-p", "0.0.0.0:1023:80", IMAGE, "true")
    bindings = inspect(mal, cid)["HostConfig"]["PortBindings"]["80/tcp"]
    assert bindings == [{"HostIp": "0.0.0.0", "HostPort": "1023"}]


# --- 7. scheduler fields -------------------------------------------------------------------


def test_cpu_quota_unlimited_is_refused(mal):
    refused(mal.docker("create", "--cpu-quota", "-1", IMAGE, "true", user=MAL))
    refused(
        mal.docker(
            "create", "--cpu-quota", "2000000", "--cpu-period", "100000", IMAGE, "true", user=MAL
        )
    )
    assert containers(mal) == []
    cid = mal_create(mal, IMAGE, "true")
    refused(mal.docker("update", "--cpu-quota", "-1", cid, user=MAL))
    refused(mal.docker("update", "--cpu-rt-runtime", "1000", cid, user=MAL))
    assert inspect(mal, cid)["HostConfig"]["CpuQuota"] == 0


@pytest.mark.parametrize(
    "fields",
    [
        {"CpuQuota": -1},
        {"CpuPeriod": -1},
        {"CpuQuota": -5, "CpuPeriod": 100000},
        {"CpuShares": -1},
        {"BlkioWeight": -1},
        {"MemoryReservation": -1},
        {"CpuRealtimeRuntime": 1000},
        {"CpuQuota": 300000, "CpuPeriod": 100000},  # 3 CPUs, max_cpus is 2
        {"CpuQuota": 2000000},  # 20 CPUs against dockerd's default 100 ms period
    ],
    ids=lambda f: "_".join(f"{k}{v}" for k, v in f.items()),
)
def test_scheduler_field_is_refused(mal, fields):
    """Each field as the API takes it (some the CLI would never send): 403, nothing created."""
    body = json.dumps({"Image": IMAGE, "Cmd": ["true"], "HostConfig": fields}).encode()
    refused_raw(*api(MAL, mal, "POST", "/v1.41/containers/create", body))
    assert containers(mal) == []


def test_cpu_quota_within_max_cpus_is_accepted_or_explained(mal):
    """One CPU's quota is within max_cpus: created, or refused with DS01's reason and fix (not a
    bare dockerd conflict with the NanoCpus DS01 sets)."""
    result = mal.docker(
        "create", "--cpu-quota", "100000", "--cpu-period", "100000", IMAGE, "true", user=MAL
    )
    if result.returncode != 0:
        refused(result)
        return
    host = inspect(mal, result.stdout.strip())["HostConfig"]
    quota, period, nano = host["CpuQuota"], host["CpuPeriod"], host["NanoCpus"]
    assert (0 < quota <= 2 * (period or 100000)) or (quota == 0 and 0 < nano <= 2 * 10**9)


# --- 8. bind sources and options -------------------------------------------------------------


@pytest.mark.parametrize("bind", ["newdir", "newdir/sub"])
def test_missing_bind_source_is_refused_not_created(mal, bind):
    """dockerd would create a missing source as root; DS01 refuses instead."""
    refused(mal.docker("run", "--rm", "-v", f"{HOME}/{bind}:/w", IMAGE, "true", user=MAL))
    assert os.listdir(HOME) == []
    mount = f"type=bind,source={HOME}/{bind},target=/w"
    assert mal.docker("run", "--rm", "--mount", mount, IMAGE, "true", user=MAL).returncode != 0
    assert os.listdir(HOME) == []


def test_create_mountpoint_is_refused(mal):
    mount = {
        "Type": "bind",
        "Source": f"{HOME}/made",
        "Target": "/w",
        "BindOptions": {"CreateMountpoint": True},
    }
    body = json.dumps({"Image": IMAGE, "Cmd": ["true"], "HostConfig": {"Mounts": [mount]}})
    status, answer = api(MAL, mal, "POST", "/v1.41/containers/create", body.encode())
    assert status in (400, 403) and answer["message"].startswith("ds01: "), answer
    assert os.listdir(HOME) == [] and containers(mal) == []


@pytest.mark.parametrize("option", ["z", "Z", "rw,z"])
def test_relabel_options_are_refused(mal, option):
    ok(sh(f"mkdir {HOME}/x"))
    refused(mal.docker("create", "-v", f"{HOME}/x:/w:{option}", IMAGE, "true", user=MAL))


@pytest.mark.parametrize("link", ["/etc", "/", "/home", "STACK"])
def test_symlink_out_of_the_home_at_create_is_refused(mal, link):
    """A symlink in the home to a path outside it: checked by where it leads, refused."""
    link = str(mal.base) if link == "STACK" else link
    ok(sh(f"ln -s {link} {HOME}/e"))
    refused(mal.docker("create", "-v", f"{HOME}/e:/w", IMAGE, "true", user=MAL))
    mount = f"type=bind,source={HOME}/e,target=/w"
    refused(mal.docker("create", "--mount", mount, IMAGE, "true", user=MAL))
    assert containers(mal) == []


def test_bind_source_is_rewritten_to_its_real_path(mal):
    """A source reached through the user's own symlink is pinned to where it really is."""
    ok(sh(f"mkdir {HOME}/real && ln -s real {HOME}/link"))
    cid = mal_create(mal, "-v", f"{HOME}/link:/w", IMAGE, "true")
    assert bind_sources(inspect(mal, cid)) == [f"{HOME}/real"]


# --- run_as: root ----------------------------------------------------------------------------


def test_run_as_root_policy_allows_root_but_no_host_binds(mal):
    with mallory_policy(mal, "    run_as: root\n"):
        assert ok(mal.docker("run", "--rm", "-u", "0", IMAGE, "id", "-u", user=MAL)).strip() == "0"
        refused(mal.docker("run", "--rm", "-v", f"{HOME}:/h", IMAGE, "true", user=MAL))
        refused(
            mal.docker(
                "run", "--rm", "--mount", f"type=bind,source={HOME},target=/h", IMAGE, "true",
                user=MAL,
            )
        )  # fmt: skip
    assert privileged_leftovers(HOME, MAL) == []


def test_run_as_root_cannot_inherit_a_host_bind(mal):
    """A bind-mounting container made while mallory ran as herself; then run_as: root. A root
    container taking that bind with --volumes-from is refused (or cannot write as root)."""
    ok(sh(f"mkdir {HOME}/x"))
    first = mal_create(mal, "-v", f"{HOME}/x:/w", IMAGE, "true")
    with mallory_policy(mal, "    run_as: root\n"):
        script = "touch /w/rootfile && chown 0:0 /w/rootfile"
        mal.docker("run", "--rm", "--volumes-from", first, IMAGE, "sh", "-c", script, user=MAL)
    assert privileged_leftovers(HOME, MAL) == []


# --- the everyday path -----------------------------------------------------------------------


def test_files_written_in_a_bound_project_belong_to_the_user(clean):
    """`docker run -v $HOME/proj:/w image ...` writes files owned by the user, not root."""
    proj = f"/home/{ALICE}/hx-proj"
    shutil.rmtree(proj, ignore_errors=True)
    ok(sh(f"mkdir {proj}", user=ALICE))
    try:
        out = ok(
            clean.docker(
                "run", "--rm", "-v", f"{proj}:/w", IMAGE, "sh", "-c",
                "touch /w/out && mkdir /w/d && echo x > /w/d/f && id -u", user=ALICE,
            )
        )  # fmt: skip
        uid, gid, _ = ids(ALICE)
        assert out.strip() == str(uid)
        for path in ("out", "d", "d/f"):
            st = os.lstat(f"{proj}/{path}")
            assert (st.st_uid, st.st_gid) == (uid, gid), path
        assert privileged_leftovers(proj, ALICE) == []
    finally:
        shutil.rmtree(proj, ignore_errors=True)
