"""Red-team variants of issues 10, 11 and 12, replayed as a real user against a real stack.

Each test is one attack class with its spellings, written so that the safe outcome is what is
asserted: refused by DS01 (with a reason and a fix), another user's object looking missing, or
the host-side effect absent. Variants that still worked when this file was written are marked
``xfail(strict=True, reason="HOLE: ...")``: the suite stays green, the hole stays recorded, and
the mark must go when the hole is closed (a strict xfail that passes fails the run).

The attacker is a dedicated student (e2e-rtmal) so nothing here depends on other modules' users.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.harness.host_ledger import temp_dir
from tests.harness.users import ensure_user
from tests.stack.ds01 import IMAGE, Ds01Stack
from tests.stack.rawhttp import as_user, request

from .conftest import POLICY

pytestmark = [pytest.mark.docker, pytest.mark.e2e]

RT, ALICE = "e2e-rtmal", "e2e-alice"
HOME = f"/home/{RT}"
TEAM = "ds01-e2e-team"
STUDENTS = "members: [e2e-alice, e2e-bob]"
RT_POLICY = POLICY.replace(STUDENTS, f"members: [e2e-alice, e2e-bob, {RT}]")


# --- helpers -------------------------------------------------------------------------------


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def refused(result: subprocess.CompletedProcess[str]) -> None:
    """Refused by DS01 with a reason and a fix (not by the CLI, not by dockerd)."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "ds01: " in result.stderr and "To fix:" in result.stderr, result.stderr


def missing(result: subprocess.CompletedProcess[str]) -> None:
    """Answered as for an object that does not exist (no hint that it is someone else's)."""
    assert result.returncode != 0, result.stdout + result.stderr
    text = result.stderr.lower()
    assert "no such" in text or "not found" in text, result.stderr


def api(user: str, stack: Ds01Stack, method: str, path: str, body: bytes = b"", **kw):
    return as_user(user, lambda: request(str(stack.gateway_socket), method, path, body, **kw))


def ds01_refusal(answer: dict) -> bool:
    message = answer.get("message", "")
    return message.startswith("ds01: ") and "To fix:" in message


def sh(command: str, user: str = RT) -> str:
    return ok(
        subprocess.run(
            ["runuser", "-u", user, "--", "sh", "-c", command],
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/tmp",
        )
    )


def inspect(stack: Ds01Stack, ref: str) -> dict:
    return json.loads(ok(stack.docker("inspect", ref, direct=True)))[0]


def direct_ok(stack: Ds01Stack, *args: str) -> None:
    stack.docker(*args, direct=True)


def build(stack: Ds01Stack, user: str, context: str, *args: str) -> subprocess.CompletedProcess:
    """`docker build` with the legacy builder, as ``user``, through the gateway."""
    env = [f"DOCKER_HOST={stack.gateway}", "HOME=/tmp", "DOCKER_BUILDKIT=0", "PATH=/usr/bin:/bin"]
    cmd = ["runuser", "-u", user, "--", "env", *env, "docker", "build", *args, context]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rt(stack, users):
    """The shared stack with e2e-rtmal as a student; the policy is put back afterwards."""
    ensure_user(RT, groups=(TEAM,))
    os.chmod(HOME, 0o750)
    stack.load_policy(RT_POLICY)
    try:
        yield stack
    finally:
        stack.load_policy(POLICY)


@pytest.fixture
def clean_rt(rt) -> Iterator[Ds01Stack]:
    rt.remove_all_containers()
    yield rt
    rt.remove_all_containers()


@pytest.fixture
def alice_box(clean_rt) -> Iterator[str]:
    """A running container of alice's; its full ID."""
    cid = ok(clean_rt.docker("run", "-d", IMAGE, "sleep", "300", user=ALICE)).strip()
    yield cid


# --- issue 10: run_as ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "who", ["0:OWNGID", "OWN:0", " 0", "0 ", "root:OWNGID", "OWN:root", "000", "0:0"]
)
def test_user_spellings_never_give_root(clean_rt, who):
    """`-u` spellings that mix root with one's own ids: refused, or run as the caller."""
    uid, gid = _ids()
    who = who.replace("OWNGID", str(gid)).replace("OWN", str(uid))
    result = clean_rt.docker("run", "--rm", "-u", who, IMAGE, "sh", "-c", "id -u; id -G", user=RT)
    if result.returncode != 0:
        refused(result)
        return
    out_uid, groups = result.stdout.split("\n", 1)
    assert out_uid == str(uid) and "0" not in groups.split()


def _ids() -> tuple[int, int]:
    entry = pwd.getpwnam(RT)
    return entry.pw_uid, entry.pw_gid


@pytest.mark.parametrize("group", ["root", "disk", "docker", "shadow", "6", "0"])
def test_group_add_of_a_group_one_lacks_is_refused(clean_rt, group):
    refused(clean_rt.docker("run", "--rm", "--group-add", group, IMAGE, "id", user=RT))


@pytest.mark.parametrize(
    "flags",
    [
        ["--userns", "host"],
        ["--privileged"],
        ["--cap-add", "SYS_ADMIN"],
        ["--cap-add", "ALL"],
        ["--security-opt", "seccomp=unconfined"],
        ["--security-opt", "apparmor=unconfined"],
        ["--security-opt", "label=disable"],
        ["--security-opt", "no-new-privileges:false"],
        ["--security-opt", "no-new-privileges=0"],
        ["--device", "/dev/sda"],
        ["--pid", "host"],
        ["--ipc", "host"],
        ["--uts", "host"],
        ["--cgroupns", "host"],
        ["--network", "host"],
        ["--sysctl", "net.ipv4.ip_forward=1"],
        ["--cpu-rt-runtime", "950000"],
        ["--kernel-memory", "1g"],
        ["--oom-kill-disable"],
        ["--oom-score-adj", "-1000"],
    ],
    ids=lambda f: "_".join(f).strip("-"),
)
def test_host_features_are_refused(clean_rt, flags):
    refused(clean_rt.docker("create", *flags, IMAGE, "true", user=RT))


def test_image_setuid_and_init_give_nothing(clean_rt):
    """`--init` and an image's setuid binaries: still the caller, no-new-privileges on."""
    out = ok(
        clean_rt.docker(
            "run", "--rm", "--init", IMAGE, "sh", "-c",
            "id -u; grep NoNewPrivs /proc/self/status", user=RT,
        )
    )  # fmt: skip
    assert out.split("\n")[0] == str(_ids()[0])
    assert "NoNewPrivs:\t1" in out


# --- issue 10: bind tricks ------------------------------------------------------------------


@pytest.fixture
def home_links(clean_rt) -> Iterator[None]:
    sh(f"mkdir -p {HOME}/d && ln -sfn /etc {HOME}/etclink && ln -sfn / {HOME}/d/rootlink")
    yield
    sh(f"rm -rf {HOME}/d {HOME}/etclink")


@pytest.mark.parametrize(
    "spec",
    [
        "-v HOME/etclink:/w",
        "-v HOME/d/rootlink/etc:/w",
        "-v HOME/../../etc:/w",
        "-v HOME/./d/../../../etc:/w",
        "-v /home/e2e-alice:/w",
        "--mount type=bind,src=HOME/etclink,dst=/w",
        "--mount type=bind,src=HOME/d/rootlink,dst=/w,readonly",
        "--mount type=volume,dst=/w,volume-opt=type=none,volume-opt=o=bind,volume-opt=device=/etc",
        "--mount type=volume,src=rtv,dst=/w,volume-opt=type=ext4,volume-opt=device=/dev/sda1",
    ],
)
def test_bind_spellings_reaching_outside_are_refused(clean_rt, home_links, spec):
    args = spec.replace("HOME", HOME).split()
    refused(clean_rt.docker("create", *args, IMAGE, "true", user=RT))


@pytest.mark.parametrize(
    "opts",
    [
        ["-o", "type=none", "-o", "o=bind", "-o", "device=/etc"],
        ["-o", "type=tmpfs", "-o", "device=tmpfs"],
        ["--opt", "type=ext4", "--opt", "device=/dev/sda1"],
    ],
)
def test_volume_create_with_mount_options_is_refused(clean_rt, opts):
    name = f"rt-{uuid.uuid4().hex[:8]}"
    refused(clean_rt.docker("volume", "create", *opts, name, user=RT))
    direct_ok(clean_rt, "volume", "rm", "-f", name)


def test_odd_but_inside_spellings_stay_inside(clean_rt):
    """`//home/u/` and a trailing slash are accepted, but what is mounted is the home."""
    cid = ok(clean_rt.docker("create", "-v", f"/{HOME}/:/w", IMAGE, "true", user=RT)).strip()
    sources = [b.split(":")[0] for b in inspect(clean_rt, cid)["HostConfig"]["Binds"] or []]
    assert [os.path.realpath(s) for s in sources] == [HOME]


# --- issue 10: docker cp / export -----------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "/v1.24", "/v1.41", "/v1.54", "/v1.20", "/V1.41"])
@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT"])
def test_archive_of_a_bind_container_refused_in_every_api_version(clean_rt, prefix, method):
    sh(f"mkdir -p {HOME}/w && echo hi > {HOME}/w/f")
    cid = ok(clean_rt.docker("create", "-v", f"{HOME}/w:/w", IMAGE, "true", user=RT)).strip()
    for ref in (cid, cid[:12]):
        status, answer = api(
            RT, clean_rt, method, f"{prefix}/containers/{ref}/archive?path=/w",
            headers={"Content-Type": "application/x-tar"},
        )  # fmt: skip
        assert status in (400, 403, 404), (status, answer)


def test_legacy_copy_route_is_refused(clean_rt):
    cid = ok(clean_rt.docker("create", "-v", f"{HOME}:/h", IMAGE, "true", user=RT)).strip()
    status, answer = api(
        RT, clean_rt, "POST", f"/v1.24/containers/{cid}/copy", b'{"Resource":"/h"}'
    )
    assert status in (400, 403, 404) and ds01_refusal(answer), answer


def test_commit_of_a_bind_container_holds_none_of_the_bind(clean_rt):
    """`docker commit` then `docker save` of a container with a bind: the bind is not in it."""
    sh(f"mkdir -p {HOME}/w && echo rt-secret > {HOME}/w/f")
    cid = ok(clean_rt.docker("create", "-v", f"{HOME}/w:/w", IMAGE, "true", user=RT)).strip()
    tag = f"{RT}/snap:{uuid.uuid4().hex[:6]}"
    try:
        ok(clean_rt.docker("commit", cid, tag, user=RT))
        out = clean_rt.docker("run", "--rm", tag, "cat", "/w/f", user=RT)
        assert "rt-secret" not in out.stdout
    finally:
        direct_ok(clean_rt, "rmi", "-f", tag)


# --- issue 10: ports, CPU, memory -----------------------------------------------------------


@pytest.mark.parametrize(
    "port",
    [
        "0.0.0.0:1023-1025:80",
        "127.0.0.1:1023:80/udp",
        "127.0.0.1:1023:80/sctp",
        "[::ffff:0.0.0.0]:8081:80",
        "[::]:8082:80",
    ],
)
def test_privileged_or_public_ports_are_refused(clean_rt, port):
    refused(clean_rt.docker("create", "-p", port, IMAGE, "true", user=RT))


@pytest.mark.parametrize("host_port", ["443", " 443", "0443", "100-2000", "+443"])
def test_raw_privileged_host_ports_are_refused(clean_rt, host_port):
    body = {
        "Image": IMAGE,
        "HostConfig": {
            "PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": host_port}]}
        },
    }
    status, answer = api(RT, clean_rt, "POST", "/containers/create", json.dumps(body).encode())
    assert status in (400, 403) and ds01_refusal(answer), answer


def _stored_low_port(stack: Ds01Stack, cid: str) -> list[str]:
    bindings = inspect(stack, cid)["HostConfig"]["PortBindings"] or {}
    low = []
    for entries in bindings.values():
        for entry in entries or []:
            text = (entry.get("HostPort") or "").strip()
            lo, _, hi = text.partition("-")
            if hi and int(lo or 0) < 1024:
                low.append(text)
    return low


@pytest.mark.parametrize("spec", ["127.0.0.1:0-1023:80", "127.0.0.1:00-80:80"])
def test_a_port_range_from_zero_is_refused(clean_rt, spec):
    result = clean_rt.docker("create", "-p", spec, IMAGE, "true", user=RT)
    if result.returncode != 0:
        refused(result)
        return
    assert _stored_low_port(clean_rt, result.stdout.strip()) == []


@pytest.mark.parametrize(
    "flags",
    [
        ["--cpu-period", "1000", "--cpu-quota", "100000"],
        ["--cpu-period", "1000000", "--cpu-quota", "-1"],
        ["--cpu-quota=-1"],
        ["--cpu-period", "1000"],
        ["--memory-swap", "-1"],
        ["--memory", "100m", "--memory-swap", "-1"],
        ["--memory", "10g"],
        ["--memory-reservation", "100g"],
    ],
    ids=lambda f: "_".join(f).strip("-"),
)
def test_scheduler_and_memory_escapes_at_create_are_refused(clean_rt, flags):
    refused(clean_rt.docker("create", *flags, IMAGE, "true", user=RT))


@pytest.mark.parametrize("flags", [["--cpus", "0.0001"], ["--cpus", "0"], ["--memory", "0"],
                                   ["--pids-limit", "-1"], ["--pids-limit", "0"],
                                   ["--cpu-quota", "0"]])  # fmt: skip
def test_zero_or_unlimited_values_keep_the_limits(clean_rt, flags):
    """Accepted, but the container still carries finite limits within the policy."""
    cid = ok(clean_rt.docker("create", *flags, IMAGE, "true", user=RT)).strip()
    host = inspect(clean_rt, cid)["HostConfig"]
    assert 0 < host["Memory"] <= 512 * 2**20
    assert host["MemorySwap"] == host["Memory"]
    assert 0 < host["PidsLimit"] <= 512
    assert host["CpuQuota"] >= 0
    cpus = host["NanoCpus"] / 1e9 if host["NanoCpus"] else host["CpuQuota"] / host["CpuPeriod"]
    assert 0 < cpus <= 2


@pytest.mark.parametrize(
    "flags",
    [
        ["--cpu-quota", "-1"],
        ["--cpu-period", "1000"],
        ["--cpu-period", "100000", "--cpu-quota", "1000000"],
        ["--cpus", "100"],
        ["--memory", "10g"],
        ["--memory-swap", "-1"],
        ["--memory", "400m", "--memory-swap", "-1"],
        ["--pids-limit", "-1"],
        ["--kernel-memory", "1g"],
        ["--memory-reservation", "10g"],
        ["--cpu-rt-runtime", "1000"],
    ],
    ids=lambda f: "_".join(f).strip("-"),
)
def test_update_escapes_are_refused(clean_rt, flags):
    cid = ok(clean_rt.docker("create", IMAGE, "sleep", "100", user=RT)).strip()
    refused(clean_rt.docker("update", *flags, cid, user=RT))
    host = inspect(clean_rt, cid)["HostConfig"]
    assert host["Memory"] == 512 * 2**20 and host["PidsLimit"] == 512


@pytest.mark.parametrize(
    "body", [{"PidsLimit": -1}, {"Memory": 0, "MemorySwap": -1}, {"CpuQuota": -1}]
)
def test_raw_update_escapes_are_refused(clean_rt, body):
    cid = ok(clean_rt.docker("create", IMAGE, "sleep", "100", user=RT)).strip()
    status, answer = api(
        RT, clean_rt, "POST", f"/containers/{cid}/update", json.dumps(body).encode()
    )
    assert status in (400, 403) and ds01_refusal(answer), answer


# --- issue 12: other users' objects by prefix and by name -----------------------------------


@pytest.fixture
def alice_net(clean_rt) -> Iterator[str]:
    name = f"rt-alice-{uuid.uuid4().hex[:6]}"
    ok(clean_rt.docker("network", "create", name, user=ALICE))
    yield name
    direct_ok(clean_rt, "network", "rm", name)


@pytest.mark.parametrize(
    "flag", ["--network container:REF", "--pid container:REF", "--ipc container:REF",
             "--volumes-from REF"],
)  # fmt: skip
@pytest.mark.parametrize("ref", ["full", "prefix12", "prefix5"])
def test_alices_container_by_prefix_looks_missing(clean_rt, alice_box, flag, ref):
    value = {"full": alice_box, "prefix12": alice_box[:12], "prefix5": alice_box[:5]}[ref]
    args = flag.replace("REF", value).split()
    missing(clean_rt.docker("create", *args, IMAGE, "true", user=RT))


@pytest.mark.parametrize(
    "command",
    [["exec", "REF", "id"], ["cp", "REF:/etc/hostname", "-"], ["commit", "REF", "e2e-rtmal/x"],
     ["rename", "REF", "rt-renamed"], ["kill", "REF"], ["rm", "REF"], ["logs", "REF"],
     ["export", "REF"], ["top", "REF"], ["diff", "REF"]],
    ids=lambda c: c[0],
)  # fmt: skip
def test_alices_container_routes_by_prefix_look_missing(clean_rt, alice_box, command):
    args = [a.replace("REF", alice_box[:7]) for a in command]
    missing(clean_rt.docker(*args, user=RT))
    assert inspect(clean_rt, alice_box)["State"]["Running"]


def test_a_name_equal_to_alices_prefix_resolves_to_ones_own(clean_rt, alice_box):
    """A container named after a prefix of alice's ID: commands by that name hit one's own."""
    mine = ok(clean_rt.docker("create", "--name", alice_box[:12], IMAGE, "true", user=RT))
    out = ok(clean_rt.docker("inspect", "-f", "{{.Id}}", alice_box[:12], user=RT)).strip()
    assert out == mine.strip() != alice_box


def test_alices_network_looks_missing(clean_rt, alice_net, alice_box):
    net_id = inspect(clean_rt, alice_net)["Id"]
    for ref in (alice_net, net_id[:12], net_id[:5]):
        missing(clean_rt.docker("create", "--network", ref, IMAGE, "true", user=RT))
        missing(clean_rt.docker("network", "inspect", ref, user=RT))
    own = ok(clean_rt.docker("create", IMAGE, "sleep", "100", user=RT)).strip()
    missing(clean_rt.docker("network", "connect", net_id[:6], own, user=RT))
    listed = ok(clean_rt.docker("network", "ls", "-q", "--no-trunc", user=RT))
    assert net_id not in listed
    for builtin in ("host", "none", "bridge"):
        result = clean_rt.docker("network", "inspect", builtin, user=RT)
        assert alice_box not in result.stdout


def test_alices_volume_looks_missing(clean_rt):
    name = f"rt-alicevol-{uuid.uuid4().hex[:6]}"
    ok(clean_rt.docker("volume", "create", name, user=ALICE))
    try:
        missing(clean_rt.docker("create", "-v", f"{name}:/w", IMAGE, "true", user=RT))
        missing(clean_rt.docker("volume", "inspect", name, user=RT))
        missing(clean_rt.docker("volume", "rm", name, user=RT))
    finally:
        direct_ok(clean_rt, "volume", "rm", "-f", name)


# --- issue 12: bodies and queries -----------------------------------------------------------

FORM = b"filters=%7B%7D"


def _raw_prune(stack: Ds01Stack, head: str, body: bytes) -> dict:
    raw = (head.replace("\n", "\r\n") + "\r\n").encode() + body
    return api(RT, stack, "POST", "/containers/prune", raw=raw)[1]


@pytest.mark.parametrize(
    "headers,chunked",
    [
        ("Content-Type: application/x-www-form-urlencoded\n", False),
        ("Content-Type: Application/X-WWW-Form-Urlencoded; charset=utf-8\n", False),
        ("Content-Type:\tapplication/x-www-form-urlencoded\n", False),
        ("Content-Type: application/json\nContent-Type: application/x-www-form-urlencoded\n",
         False),
        ("Content-Type: text/plain\n application/x-www-form-urlencoded\n", False),
        ("Content-Type: multipart/form-data; boundary=X\n", False),
        ("Content-Type: application/x-www-form-urlencoded\n", True),
        ("", True),
        ("Content-Type: text/plain\n", False),
    ],
)  # fmt: skip
def test_prune_with_a_body_never_reaches_alice(clean_rt, headers, chunked):
    stopped = ok(clean_rt.docker("create", IMAGE, "true", user=ALICE)).strip()
    if chunked:
        frame = b"%x\r\n" % len(FORM) + FORM + b"\r\n0\r\n\r\n"
        head = f"POST /containers/prune HTTP/1.1\nHost: d\n{headers}Transfer-Encoding: chunked\n"
    else:
        frame = FORM
        head = f"POST /containers/prune HTTP/1.1\nHost: d\n{headers}Content-Length: {len(FORM)}\n"
    answer = _raw_prune(clean_rt, head + "Connection: close\n", frame)
    assert ds01_refusal(answer), answer
    assert inspect(clean_rt, stopped)["Id"] == stopped


@pytest.mark.parametrize(
    "filters",
    ['{"label!":["ds01.user=e2e-rtmal"]}', '{"label":["ds01.user=e2e-alice"]}',
     '{"label":["ds01.user"]}', '{"until":["2100-01-01"]}'],
)  # fmt: skip
def test_prune_filters_never_reach_alice(clean_rt, filters):
    stopped = ok(clean_rt.docker("create", IMAGE, "true", user=ALICE)).strip()
    volume = f"rt-av-{uuid.uuid4().hex[:6]}"
    ok(clean_rt.docker("volume", "create", volume, user=ALICE))
    try:
        q = quote(filters)
        api(RT, clean_rt, "POST", f"/containers/prune?filters={q}")
        api(RT, clean_rt, "POST", f"/volumes/prune?filters={q}")
        status, answer = api(RT, clean_rt, "POST", f"/networks/prune?filters={q}")
        assert status == 403 and ds01_refusal(answer)
        assert inspect(clean_rt, stopped)["Id"] == stopped
        ok(clean_rt.docker("volume", "inspect", volume, direct=True))
    finally:
        direct_ok(clean_rt, "volume", "rm", "-f", volume)


@pytest.mark.parametrize(
    "target",
    ["/containers/json?a=1;&all=1", "/containers/json?all=%zz", "/containers/json?all=1%",
     "http://d/containers/prune", "/v1.20/containers/json",
     "//containers/json", "/containers/./json", "/containers/%2e%2e/json"],
)  # fmt: skip
def test_targets_dockerd_reads_differently_are_refused(clean_rt, target):
    raw = f"GET {target} HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n".encode()
    status, answer = api(RT, clean_rt, "GET", "/", raw=raw)
    assert status in (400, 403, 404) and ds01_refusal(answer), (status, answer)


# --- issue 12: builds -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    ["networkmode=container:REF", "networkmode=host", "cgroupparent=/",
     "cgroupparent=/ds01/e2e-alice", "extrahosts=a:1.2.3.4",
     "ulimits=%5B%7B%22Name%22%3A%22nproc%22%2C%22Soft%22%3A-1%2C%22Hard%22%3A-1%7D%5D",
     "t=e2e-alice/model", "t=docker.io/e2e-alice/model", "isolation=hyperv"],
)  # fmt: skip
def test_build_query_escapes_are_refused(clean_rt, alice_box, query):
    target = "/build?" + query.replace("REF", alice_box[:12])
    status, answer = api(
        RT, clean_rt, "POST", target, headers={"Content-Type": "application/x-tar"}
    )
    assert ds01_refusal(answer), (status, answer)


def test_build_query_in_a_form_body_is_refused(clean_rt):
    status, answer = api(
        RT, clean_rt, "POST", "/build", b"networkmode=host&cgroupparent=/",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    assert ds01_refusal(answer), (status, answer)


# --- issue 12: images -----------------------------------------------------------------------


@pytest.fixture
def rt_image(clean_rt) -> Iterator[tuple[str, str]]:
    """An image e2e-rtmal committed: (tag, image id)."""
    cid = ok(clean_rt.docker("create", IMAGE, "true", user=RT)).strip()
    tag = f"{RT}/priv:{uuid.uuid4().hex[:6]}"
    image = ok(clean_rt.docker("commit", cid, tag, user=RT)).strip()
    yield tag, image
    direct_ok(clean_rt, "rmi", "-f", tag)


def _tag(stack: Ds01Stack, source: str, name: str) -> subprocess.CompletedProcess[str]:
    return stack.docker("tag", source, name, user=RT)


@pytest.mark.parametrize(
    "name",
    ["e2e-alice/model", "docker.io/e2e-alice/model", "localhost/e2e-alice/model",
     "localhost:5000/e2e-alice/model", "index.docker.io/e2e-alice/model:v1",
     IMAGE, "docker.io/library/" + IMAGE],
)  # fmt: skip
def test_tags_over_others_names_are_refused(clean_rt, rt_image, name):
    refused(_tag(clean_rt, rt_image[0], name))


@pytest.mark.parametrize("form", ["id12", "sha12", "id4", "full", "sha_full", "tag", "dio_tag"])
def test_another_users_image_looks_missing_in_every_spelling(clean_rt, rt_image, form):
    tag, image = rt_image
    bare = image.removeprefix("sha256:")
    ref = {"id12": bare[:12], "sha12": f"sha256:{bare[:12]}", "id4": bare[:4], "full": bare,
           "sha_full": image, "tag": tag, "dio_tag": f"docker.io/{tag}"}[form]  # fmt: skip
    for route in ("json", "history", "get"):
        status, _ = api(ALICE, clean_rt, "GET", f"/images/{ref}/{route}")
        assert status == 404, (route, status)
    status, _ = api(ALICE, clean_rt, "GET", f"/images/get?names={quote(ref)}&names={IMAGE}")
    assert status == 404
    missing(clean_rt.docker("create", ref, "true", user=ALICE))


@pytest.fixture
def contexts() -> Iterator[tuple[Path, Path]]:
    base = temp_dir("ds01rt-")  # removed when the session ends
    os.chmod(base, 0o755)
    mal, victim = base / "m", base / "a"
    for d in (mal, victim):
        d.mkdir()
        os.chmod(d, 0o755)
    yield mal, victim


def test_a_squatted_public_name_is_not_used_by_another_users_build(clean_rt, contexts):
    mal_ctx, alice_ctx = contexts
    name = f"rt-python{uuid.uuid4().hex[:6]}:3.11"
    (mal_ctx / "Dockerfile").write_text(f"FROM {IMAGE}\nRUN echo MALLORY-WAS-HERE > /marker\n")
    (alice_ctx / "Dockerfile").write_text(f"FROM {name}\nRUN cat /marker || true\n")
    alice_tag = f"{ALICE}/app:{uuid.uuid4().hex[:6]}"
    try:
        squat = build(clean_rt, RT, str(mal_ctx), "-t", name)
        if squat.returncode != 0:
            refused(squat)
            return
        victim = build(clean_rt, ALICE, str(alice_ctx), "-t", alice_tag)
        assert "MALLORY-WAS-HERE" not in victim.stdout + victim.stderr
    finally:
        direct_ok(clean_rt, "rmi", "-f", name, alice_tag)


def test_a_squatted_public_name_does_not_block_others_pulls(clean_rt, rt_image):
    name = f"rt-squat{uuid.uuid4().hex[:6]}"
    try:
        squat = _tag(clean_rt, rt_image[0], f"{name}:1.99")
        if squat.returncode != 0:
            refused(squat)
            return
        _, answer = api(ALICE, clean_rt, "POST", f"/images/create?fromImage={name}&tag=1.99")
        assert not ds01_refusal(answer), answer
    finally:
        direct_ok(clean_rt, "rmi", "-f", f"{name}:1.99")
