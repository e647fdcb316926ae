"""Red-team round 2: variants the earlier attack files do not try, as real students.

bob attacks, alice is the victim. Each test asserts the safe outcome: refused by DS01, the
other user's object answered as missing, no GPU, or the host-side effect absent.
"""

from __future__ import annotations

import io
import json
import os
import pwd
import socket
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from tests.harness.host_ledger import temp_dir
from tests.stack.ds01 import IMAGE, Ds01Stack
from tests.stack.rawhttp import as_user, request

pytestmark = [pytest.mark.docker, pytest.mark.e2e]

ALICE, BOB = "e2e-alice", "e2e-bob"
V = "/v1.41"


def ok(result) -> str:
    assert result.returncode == 0, f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def api(user: str, stack: Ds01Stack, method: str, path: str, body: bytes = b"", **kw):
    return as_user(user, lambda: request(str(stack.gateway_socket), method, path, body, **kw))


def jpost(user: str, stack: Ds01Stack, path: str, obj) -> tuple[int, dict]:
    return api(user, stack, "POST", path, json.dumps(obj).encode())


def inspect(stack: Ds01Stack, ref: str) -> dict:
    return json.loads(ok(stack.docker("inspect", ref, direct=True)))[0]


def refused_or_missing(status: int, answer: dict) -> None:
    assert status in (400, 403, 404), (status, answer)


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def alice_box(clean) -> str:
    return ok(clean.docker("run", "-d", IMAGE, "sleep", "300", user=ALICE)).strip()


@pytest.fixture
def nets(clean) -> Iterator[tuple[str, str, str]]:
    """(alice's network name, its ID, bob's network name)."""
    tag = uuid.uuid4().hex[:6]
    a, b = f"r2-a-{tag}", f"r2-b-{tag}"
    ok(clean.docker("network", "create", a, user=ALICE))
    ok(clean.docker("network", "create", b, user=BOB))
    yield a, inspect(clean, a)["Id"], b
    clean.remove_all_containers()
    removed = clean.docker("network", "rm", a, b, direct=True)
    assert removed.returncode == 0, removed.stderr  # a left-over network leaks a host bridge


# --- objects: networks ---------------------------------------------------------------------


@pytest.mark.parametrize("form", ["full", "prefix12", "name"])
def test_connect_or_disconnect_alices_container_looks_missing(clean, nets, alice_box, form):
    """Bob attaches alice's container to his network, or detaches it from `none`."""
    _, _, b_name = nets
    before = sorted(inspect(clean, alice_box)["NetworkSettings"]["Networks"])
    name = inspect(clean, alice_box)["Name"].lstrip("/")
    ref = {"full": alice_box, "prefix12": alice_box[:12], "name": name}[form]
    for net, verb in ((b_name, "connect"), (before[0], "disconnect")):
        status, answer = jpost(
            BOB, clean, f"{V}/networks/{net}/{verb}", {"Container": ref, "Force": True}
        )
        assert status == 404, (verb, status, answer)
    assert sorted(inspect(clean, alice_box)["NetworkSettings"]["Networks"]) == before


@pytest.mark.parametrize("running", [True, False], ids=["running", "created"])
def test_connect_endpoint_network_id_cannot_join_alices_network(clean, nets, running):
    """Bob connects his container to his network with EndpointConfig.NetworkID naming
    alice's: dockerd would attach by that ID. Refused; his container never joins hers."""
    _, a_id, b_name = nets
    verb = ["run", "-d"] if running else ["create"]
    own = ok(clean.docker(*verb, IMAGE, "sleep", "300", user=BOB)).strip()
    for network_id in (a_id, a_id[:12]):
        body = {"Container": own, "EndpointConfig": {"NetworkID": network_id}}
        status, answer = jpost(BOB, clean, f"{V}/networks/{b_name}/connect", body)
        assert status == 403 and "EndpointConfig.NetworkID" in answer["message"], answer
    if not running:
        clean.docker("start", own, user=BOB)
    joined = {
        n.get("NetworkID") for n in inspect(clean, own)["NetworkSettings"]["Networks"].values()
    }
    assert a_id not in joined


def test_connect_link_to_alices_container_looks_missing(clean, nets, alice_box):
    """A legacy link made on connect (`docker network connect --link`) names only own containers."""
    _, _, b_name = nets
    own = ok(clean.docker("run", "-d", IMAGE, "sleep", "300", user=BOB)).strip()
    name = inspect(clean, alice_box)["Name"].lstrip("/")
    for ref in (alice_box, alice_box[:12], name):
        body = {"Container": own, "EndpointConfig": {"Links": [f"{ref}:db"]}}
        status, answer = jpost(BOB, clean, f"{V}/networks/{b_name}/connect", body)
        assert status == 404, answer


def test_create_endpoint_network_id_prefix_of_alices_network(clean, nets):
    """Create on one's own network whose endpoint names alice's network by ID prefix."""
    _, a_id, b_name = nets
    for network_id in (a_id, a_id[:12]):
        body = {
            "Image": IMAGE,
            "Cmd": ["true"],
            "HostConfig": {"NetworkMode": b_name},
            "NetworkingConfig": {"EndpointsConfig": {b_name: {"NetworkID": network_id}}},
        }
        refused_or_missing(*jpost(BOB, clean, f"{V}/containers/create", body))


def test_cgroup_spec_naming_alices_container_is_refused(clean, alice_box):
    """HostConfig.Cgroup = container:<alice's> (dockerd 20.10 ignores it; a later one may not)."""
    body = {"Image": IMAGE, "Cmd": ["cat", "/proc/self/cgroup"],
            "HostConfig": {"Cgroup": f"container:{alice_box}"}}  # fmt: skip
    status, answer = jpost(BOB, clean, f"{V}/containers/create", body)
    assert status == 403 and "HostConfig.Cgroup" in answer["message"], answer


# --- objects: container, exec routes by prefix ---------------------------------------------

ROUTES = [
    ("GET", "/containers/REF/stats?stream=0"),
    ("GET", "/containers/REF/changes"),
    ("POST", "/containers/REF/resize?h=10&w=10"),
    ("POST", "/containers/REF/pause"),
    ("POST", "/containers/REF/attach?stream=0&logs=1&stdout=1"),
    ("GET", "/containers/REF/attach/ws?logs=1&stdout=1"),
    ("POST", "/containers/REF/wait?condition=removed"),
    ("POST", "/containers/REF/restart?t=0"),
    ("POST", "/containers/REF/stop?t=0"),
    ("POST", "/containers/REF/update"),
    ("DELETE", "/containers/REF?force=1"),
]


@pytest.mark.parametrize("route", ROUTES, ids=[f"{m}{p.split('?')[0][15:]}" for m, p in ROUTES])
def test_alices_container_raw_routes_look_missing(clean, alice_box, route):
    """Raw API routes the CLI tests skip (stats, pause, attach/ws, wait...) on alice's ID."""
    method, path = route
    body = b"{}" if path.endswith("/update") else b""
    for ref in (alice_box, alice_box[:12]):
        status, answer = api(BOB, clean, method, V + path.replace("REF", ref), body)
        assert status == 404, (ref, status, answer)
    assert inspect(clean, alice_box)["State"]["Running"]
    assert not inspect(clean, alice_box)["State"]["Paused"]


def test_alices_exec_instance_looks_missing(clean, alice_box):
    """Alice's exec ID used by bob: inspect, resize, start."""
    status, answer = jpost(ALICE, clean, f"{V}/containers/{alice_box}/exec", {"Cmd": ["true"]})
    assert status == 201, answer
    exec_id = answer["Id"]
    for method, path, data in (
        ("GET", f"/exec/{exec_id}/json", b""),
        ("POST", f"/exec/{exec_id}/resize?h=1&w=1", b""),
        ("POST", f"/exec/{exec_id}/start", b'{"Detach":true}'),
    ):
        status, answer = api(BOB, clean, method, V + path, data)
        assert status == 404, (path, status, answer)


# --- objects: filters and events -----------------------------------------------------------


@pytest.mark.parametrize(
    "flt",
    ["id=REF12", "name=NAME", "label=ds01.user=e2e-alice", "ancestor=" + IMAGE, "status=running",
     "before=REF12", "since=REF12", "network=none", "isolation=default"],
)  # fmt: skip
def test_ps_filters_never_show_alice(clean, alice_box, flt):
    """`docker ps --filter` naming alice's container, name, label, before/since."""
    name = inspect(clean, alice_box)["Name"].lstrip("/")
    flt = flt.replace("REF12", alice_box[:12]).replace("NAME", name)
    result = clean.docker("ps", "-a", "--no-trunc", "--filter", flt, user=BOB)
    assert alice_box not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "query",
    ['filters={"label":{"ds01.user=e2e-alice":true}}',
     'filters={"id":["REF"]}&filters={"label":["x"]}',
     'filters={"label":["ds01.user=e2e-alice"]}&all=1',
     'all=1&before=REF', 'all=1&since=REF', 'all=1&limit=5',
     'filters={"label":["ds01.user!=e2e-bob"]}&all=1'],
)  # fmt: skip
def test_raw_container_list_queries_never_show_alice(clean, alice_box, query):
    """Map-form filters, repeated filters, legacy before/since on GET /containers/json."""
    q = query.replace("REF", alice_box)
    q = "&".join(f"{k}={quote(v)}" for k, _, v in (part.partition("=") for part in q.split("&")))
    status, answer = api(BOB, clean, "GET", f"{V}/containers/json?{q}")
    assert alice_box not in json.dumps(answer), (status, answer)


def test_events_never_show_alices_objects(clean, alice_box):
    """Replayed events (`--since`/`--until`) with filters naming alice's container."""
    start = int(time.time()) - 120
    name = inspect(clean, alice_box)["Name"].lstrip("/")
    until = str(int(time.time()) + 1)
    for flt in ([], ["--filter", f"container={alice_box}"], ["--filter", f"container={name}"],
                ["--filter", "label=ds01.user=e2e-alice"], ["--filter", "type=network"]):  # fmt: skip
        out = clean.docker(
            "events", "--since", str(start), "--until", until, "--format", "{{json .}}", *flt,
            user=BOB,
        )  # fmt: skip
        assert alice_box not in out.stdout, flt


# --- objects: volumes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "mount",
    ["type=volume,src=VOL,dst=/w", "type=volume,src=VOL,dst=/w,volume-nocopy",
     "type=volume,source=VOL,target=/w,readonly"],
)  # fmt: skip
def test_alices_volume_by_mount_flag_looks_missing(clean, mount):
    """Alice's volume through `--mount type=volume`; `volume ls` filters naming it."""
    vol = f"r2-av-{uuid.uuid4().hex[:6]}"
    ok(clean.docker("volume", "create", vol, user=ALICE))
    try:
        result = clean.docker("create", "--mount", mount.replace("VOL", vol), IMAGE, "true",
                              user=BOB)  # fmt: skip
        assert result.returncode != 0
        assert "no such" in result.stderr.lower() or "not found" in result.stderr.lower()
        for flt in (f"name={vol}", "dangling=true", "label=ds01.user=e2e-alice"):
            listed = clean.docker("volume", "ls", "-q", "--filter", flt, user=BOB)
            assert vol not in listed.stdout, flt
    finally:
        clean.docker("volume", "rm", "-f", vol, direct=True)


@pytest.mark.parametrize("key", ["ds01.user", "DS01.USER"])
def test_mount_volume_label_cannot_plant_a_volume_as_alices(clean, key):
    """`--mount ...,volume-label=ds01.user=e2e-alice` on a new volume: it is still bob's, so
    alice never gets it as hers while bob's container keeps it mounted."""
    vol = f"r2trap-{uuid.uuid4().hex[:6]}"
    mount = f"type=volume,src={vol},dst=/w,volume-label={key}={ALICE}"
    try:
        made = clean.docker("run", "-d", "--mount", mount, IMAGE, "sleep", "300", user=BOB)
        if made.returncode != 0:
            assert "ds01: " in made.stderr, made.stderr
            return
        spy = made.stdout.strip()
        labels = inspect(clean, vol)["Labels"] or {}
        assert labels.get("ds01.user") in (None, BOB), labels
        clean.docker("run", "--rm", "-v", f"{vol}:/d", IMAGE, "sh", "-c",
                     "echo alice-data > /d/f", user=ALICE)  # fmt: skip
        stolen = clean.docker("exec", spy, "cat", "/w/f", user=BOB).stdout
        assert "alice-data" not in stolen
    finally:
        clean.remove_all_containers()
        clean.docker("volume", "rm", "-f", vol, direct=True)


# --- identity: labels on volumes, networks, images -----------------------------------------


@pytest.mark.parametrize("key", ["ds01.user", "DS01.USER", "Ds01.User"])
def test_volume_and_network_labels_cannot_claim_alice(clean, key):
    """`--label ds01.user=e2e-alice` (any case) on bob's volume and network."""
    tag = uuid.uuid4().hex[:6]
    vol, net = f"r2-bv-{tag}", f"r2-bn-{tag}"
    try:
        ok(clean.docker("volume", "create", "--label", f"{key}={ALICE}", vol, user=BOB))
        ok(clean.docker("network", "create", "--label", f"{key}={ALICE}", net, user=BOB))
        assert inspect(clean, vol)["Labels"].get("ds01.user") == BOB
        assert inspect(clean, net)["Labels"].get("ds01.user") == BOB
        assert vol not in ok(clean.docker("volume", "ls", "-q", user=ALICE))
        assert net not in ok(clean.docker("network", "ls", user=ALICE))
    finally:
        clean.docker("volume", "rm", "-f", vol, direct=True)
        clean.docker("network", "rm", net, direct=True)


def test_commit_changes_forge_neither_owner_nor_gpu_nor_root(clean):
    """`docker commit --change` LABEL ds01.*, ENV NVIDIA_VISIBLE_DEVICES, USER 0."""
    own = ok(clean.docker("create", IMAGE, "true", user=BOB)).strip()
    tag = f"{BOB}/r2forge:{uuid.uuid4().hex[:6]}"
    changes = ["LABEL ds01.user=e2e-alice", "LABEL ds01.devices=GPU-0", "ENV NVIDIA_VISIBLE_DEVICES=all",
               "ENV nvidia_visible_devices=all", "USER 0:0"]  # fmt: skip
    try:
        ok(clean.docker("commit", *(a for c in changes for a in ("--change", c)), own, tag,
                        user=BOB))  # fmt: skip
        cid = ok(clean.docker("run", "-d", tag, "sleep", "60", user=BOB)).strip()
        info = inspect(clean, cid)
        assert info["Config"]["Labels"]["ds01.user"] == BOB
        assert info["Config"]["Labels"]["ds01.devices"] == ""
        env = ok(clean.docker("exec", cid, "env", user=BOB))
        nvidia = sorted(line for line in env.splitlines() if line.upper().startswith("NVIDIA"))
        assert nvidia in (
            ["NVIDIA_VISIBLE_DEVICES=void"],
            ["NVIDIA_VISIBLE_DEVICES=void", "nvidia_visible_devices=all"],
        ), nvidia
        assert ok(clean.docker("exec", cid, "id", "-u", user=BOB)).strip() != "0"
        assert cid not in ok(clean.docker("ps", "-q", "--no-trunc", user=ALICE))
    finally:
        clean.remove_all_containers()
        clean.docker("rmi", "-f", tag, direct=True)


def _tiny_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("hello")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    return buf.getvalue()


def test_import_changes_forge_no_owner(clean):
    """`docker import --change LABEL ds01.user=...`: the image is bob's, not alice's."""
    tag = f"{BOB}/r2imp"
    changes = quote("LABEL ds01.user=e2e-alice")
    status, answer = api(
        BOB, clean, "POST", f"{V}/images/create?fromSrc=-&repo={tag}&tag=1&changes={changes}",
        _tiny_tar(), headers={"Content-Type": "application/x-tar"},
    )  # fmt: skip
    try:
        if status != 200:
            refused_or_missing(status, answer)
            return
        status, _ = api(ALICE, clean, "GET", f"{V}/images/{tag}:1/json")
        assert status == 404
        listed = ok(clean.docker("images", "--filter", "label=ds01.user=e2e-alice", user=ALICE))
        assert "r2imp" not in listed
    finally:
        clean.docker("rmi", "-f", f"{tag}:1", direct=True)


def test_import_from_a_url_or_path_is_not_fetched_as_root(clean):
    """`fromSrc` naming a host path or URL: dockerd would fetch it as root."""
    for src in ("/etc/shadow", "file:///etc/shadow", "http://127.0.0.1:1/x"):
        status, answer = api(
            BOB, clean, "POST", f"{V}/images/create?fromSrc={quote(src)}&repo={BOB}/r2url&tag=1"
        )
        assert status != 200 or "error" in json.dumps(answer).lower(), (src, answer)
    clean.docker("rmi", "-f", f"{BOB}/r2url:1", direct=True)


# --- GPUs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [["NVIDIA_VISIBLE_DEVICES=all"], ["nvidia_visible_devices=all"], ["NVIDIA_VISIBLE_DEVICES"],
     ["Nvidia_Visible_Devices=0"], ["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_VISIBLE_DEVICES=0"],
     ["NVIDIA_DRIVER_CAPABILITIES=all"], ["NVIDIA_VISIBLE_DEVICES=void", "x=1"]],
)  # fmt: skip
def test_raw_env_spellings_give_no_gpu(clean, env):
    """NVIDIA_* env spellings (case, no value, duplicates) in a raw create body."""
    body = {"Image": IMAGE, "Cmd": ["sleep", "60"], "Env": env}
    status, answer = jpost(BOB, clean, f"{V}/containers/create", body)
    assert status == 201, answer
    got = inspect(clean, answer["Id"])["Config"]["Env"]
    nvidia = [e for e in got if e.upper().startswith("NVIDIA")]
    assert nvidia == ["NVIDIA_VISIBLE_DEVICES=void"], got
    assert not inspect(clean, answer["Id"])["HostConfig"]["DeviceRequests"]


@pytest.mark.parametrize(
    "requests",
    [[{"Driver": "nvidia", "Count": -1, "Capabilities": [["gpu"]]}],
     [{"Driver": "", "DeviceIDs": ["0"], "Capabilities": [["gpu"]]}],
     [{"Driver": "NVIDIA", "Count": 1, "Capabilities": [["compute"]]}],
     [{"Driver": "cdi", "DeviceIDs": ["nvidia.com/gpu=all"]}]],
)  # fmt: skip
def test_update_device_requests_is_refused(clean, requests):
    """`POST /containers/{id}/update` with DeviceRequests spellings."""
    cid = ok(clean.docker("create", IMAGE, "sleep", "60", user=BOB)).strip()
    status, answer = jpost(BOB, clean, f"{V}/containers/{cid}/update", {"DeviceRequests": requests})
    assert status in (400, 403), answer
    assert not inspect(clean, cid)["HostConfig"]["DeviceRequests"]


@pytest.mark.parametrize(
    "requests",
    [[{"Driver": "NVIDIA", "Count": -1, "Capabilities": [["gpu"]]}],
     [{"Driver": "cdi", "DeviceIDs": ["nvidia.com/gpu=all"]}],
     [{"Driver": "", "Count": 0, "DeviceIDs": [], "Capabilities": [["nvidia"]]}],
     [{"Capabilities": [["gpu", "utility"]], "Options": {"x": "y"}}]],
)  # fmt: skip
def test_student_device_request_spellings_get_no_device(clean, requests):
    """Students have max_gpus 0: any DeviceRequests spelling ends with none stored."""
    body = {"Image": IMAGE, "Cmd": ["true"], "HostConfig": {"DeviceRequests": requests}}
    status, answer = jpost(BOB, clean, f"{V}/containers/create", body)
    if status == 201:
        assert not inspect(clean, answer["Id"])["HostConfig"]["DeviceRequests"]
    else:
        refused_or_missing(status, answer)


# --- host ----------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", ["rtprio=99", "rttime=-1", "rtprio=1:99"])
def test_realtime_ulimits_are_refused(clean, limit):
    """`--ulimit rtprio/rttime` (real-time scheduling past the CPU caps)."""
    result = clean.docker("create", "--ulimit", limit, IMAGE, "true", user=BOB)
    assert result.returncode != 0, result.stdout


@pytest.mark.parametrize(
    "host",
    [{"Capabilities": ["CAP_SYS_ADMIN"]}, {"CgroupParent": "/"}, {"CgroupParent": "../../"},
     {"Binds": ["/home/e2e-bob/../e2e-alice:/w"]}, {"Binds": ["/home/e2e-bob\u0000/x:/w"]},
     {"Mounts": [{"Type": "volume", "Target": "/w",
                  "VolumeOptions": {"DriverConfig": {"Name": "local",
                                                     "Options": {"TYPE": "none", "O": "bind",
                                                                 "DEVICE": "/etc"}}}}]},
     {"Mounts": [{"Type": "tmpfs", "Source": "/etc", "Target": "/w"}]},
     {"Mounts": [{"Type": "bind", "Source": "/etc", "Target": "/w", "ReadOnly": True}]},
     {"Mounts": [{"Type": "volume", "Source": "/etc", "Target": "/w"}]},
     {"Mounts": [{"Type": "Bind", "Source": "/etc", "Target": "/w"}]},
     {"Binds": ["/etc:/w:ro"], "Mounts": []},
     {"VolumeDriver": "local", "Binds": ["r2v:/w"],
      "Mounts": [{"Type": "volume", "Source": "r2v", "Target": "/x",
                  "VolumeOptions": {"DriverConfig": {"Name": "local",
                                                     "Options": {"device": "/etc"}}}}]},
     {"Devices": [{"PathOnHost": "/dev/nvidia0", "PathInContainer": "/dev/nvidia0",
                   "CgroupPermissions": "rwm"}]},
     {"DeviceCgroupRules": ["c 195:* rwm"]},
     {"Runtime": "nvidia"}, {"Runtime": "RUNC"},
     {"SecurityOpt": ["no-new-privileges:true", "seccomp:unconfined"]},
     {"SecurityOpt": ["no-new-privileges", "apparmor:unconfined"]},
     {"SecurityOpt": ["NO-NEW-PRIVILEGES"]},
     {"Sysctls": {"kernel.shm_rmid_forced": "1"}},
     {"CgroupnsMode": "HOST"}, {"NetworkMode": "HOST"}],
)  # fmt: skip
def test_raw_host_config_variants_are_refused_or_harmless(clean, host):
    """Raw HostConfig spellings: caps, cgroup parents, volume opts, devices, runtimes..."""
    body = {"Image": IMAGE, "Cmd": ["true"], "HostConfig": host}
    status, answer = jpost(BOB, clean, f"{V}/containers/create", body)
    if status == 201:
        info = inspect(clean, answer["Id"])
        pytest.fail(f"accepted: {json.dumps(info['HostConfig'])[:1500]}")
    assert status in (400, 403, 404) or answer.get("message", "").startswith("ds01: "), answer


@pytest.mark.parametrize(
    "host", [{"PidMode": "HOST"}, {"UTSMode": "HOST"}, {"UsernsMode": "HOST"},
             {"IpcMode": "HOST"}, {"PidMode": "Host"}, {"UTSMode": " host"}],
)  # fmt: skip
def test_host_namespace_case_spellings_stay_private(clean, host):
    """`HOST` and friends pass DS01's `== "host"` check; dockerd must then not share the host's."""
    script = "cat /proc/1/cmdline; echo; hostname"
    body = {"Image": IMAGE, "Cmd": ["sh", "-c", script], "HostConfig": host}
    status, answer = jpost(BOB, clean, f"{V}/containers/create", body)
    if status != 201:
        refused_or_missing(status, answer)
        return
    result = clean.docker("start", "-a", answer["Id"], user=BOB)
    if result.returncode != 0:
        return  # dockerd refused the mode at start
    first, name = result.stdout.split("\n")[:2]
    assert first.startswith("sh") and name == answer["Id"][:12], result.stdout


@pytest.mark.parametrize(
    "who", ["0:OWNGID", " 0", "000", "OWN:0", "+0", "0x0", "-0", "OWN:", ":", "root:OWNGID",
            "OWN:root", "e2e-alice", "ALICEUID"],
)  # fmt: skip
def test_exec_user_spellings_never_give_root_or_another_uid(clean, who):
    """`docker exec -u` spellings of root, of own uid with gid 0, of alice's uid."""
    uid, gid = pwd.getpwnam(BOB).pw_uid, pwd.getpwnam(BOB).pw_gid
    alice_uid = pwd.getpwnam(ALICE).pw_uid
    who = (who.replace("OWNGID", str(gid)).replace("ALICEUID", str(alice_uid))
           .replace("OWN", str(uid)))  # fmt: skip
    cid = ok(clean.docker("run", "-d", IMAGE, "sleep", "60", user=BOB)).strip()
    result = clean.docker("exec", "-u", who, cid, "sh", "-c", "id -u; id -G", user=BOB)
    if result.returncode != 0:
        assert "ds01: " in result.stderr or "unable to find user" in result.stderr.lower(), (
            result.stderr
        )
        return
    out_uid, groups = result.stdout.split("\n", 1)
    assert out_uid == str(uid) and "0" not in groups.split(), result.stdout


# --- gateway framing ---------------------------------------------------------------------


def _raw(user, stack, data: bytes) -> str:
    def go():
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(stack.gateway_socket))
            s.sendall(data)
            out = b""
            try:
                while chunk := s.recv(65536):
                    out += chunk
            except TimeoutError:
                pass
            return out.decode(errors="replace")

    return as_user(user, go)


@pytest.mark.parametrize(
    "first",
    ["GET /v1.41/_ping HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n",
     "GET /v1.41/version HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
     "POST /v1.41/containers/OWN/wait?condition=not-running HTTP/1.1\r\nHost: d\r\n"
     "Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n",
     "POST /v1.41/containers/OWN/resize?h=1&w=1 HTTP/1.1\r\nHost: d\r\n"
     "Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n",
     "GET /v1.41/_ping HTTP/1.1\r\nHost: d\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
     "GET /v1.41/_ping HTTP/1.0\r\nHost: d\r\nConnection: keep-alive\r\n\r\n",
     "GET /v1.41/_ping HTTP/1.1\r\nHost: d\r\n\r\n"],
)  # fmt: skip
def test_no_request_smuggled_after_an_upgrade_header(clean, first):
    """An Upgrade header on a route dockerd does not hijack, then a pipelined list."""
    alice = ok(clean.docker("run", "-d", IMAGE, "sleep", "300", user=ALICE)).strip()
    own = ok(clean.docker("create", IMAGE, "true", user=BOB)).strip()
    second = "GET /v1.41/containers/json?all=1 HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n"
    out = _raw(BOB, clean, (first.replace("OWN", own) + second).encode())
    assert alice not in out


LIST = "GET /v1.41/containers/json?all=1 HTTP/1.1\r\nHost: d\r\n\r\n"


@pytest.mark.parametrize(
    "head,body",
    [("Transfer-Encoding: chunked, identity", "0\r\n\r\n"),
     ("Transfer-Encoding: identity\r\nTransfer-Encoding: chunked", "0\r\n\r\n"),
     ("Transfer-Encoding: Chunked", "0\r\n\r\n"),
     ("Transfer-Encoding:  chunked ", "0\r\n\r\n"),
     ("Transfer-Encoding: chunked", "0;ext=1\r\n\r\n"),
     ("Transfer-Encoding: chunked", "00\r\n\r\n"),
     ("Transfer-Encoding: chunked", "0\r\nX-Trailer: y\r\n\r\n"),
     ("Transfer-Encoding: chunked", "0\n\n"),
     ("Content-Length: 0\r\nContent-Length: 0", ""),
     ("Content-Length: +0", ""),
     ("Content-Length: 0x0", ""),
     ("Content-Length:0", ""),
     ("Content-Length: " + str(len(LIST)), LIST)],
)  # fmt: skip
def test_no_request_smuggled_by_framing_variants(clean, head, body):
    """TE/CL spellings a second parser might read differently, then a pipelined list."""
    alice = ok(clean.docker("run", "-d", IMAGE, "sleep", "300", user=ALICE)).strip()
    first = f"POST /v1.41/containers/prune HTTP/1.1\r\nHost: d\r\n{head}\r\n\r\n{body}"
    second = "GET /v1.41/containers/json?all=1 HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n"
    out = _raw(BOB, clean, (first + second).encode())
    assert alice not in out
    assert inspect(clean, alice)["State"]["Running"]


@pytest.fixture
def bobs_base(clean) -> Iterator[str]:
    """A shared base image whose LABEL says ds01.user=e2e-bob (bob published it; pulled, it
    is anyone's to build on). Removed afterwards."""
    base = f"r2base{uuid.uuid4().hex[:6]}:1"
    seed = ok(clean.docker("create", IMAGE, "true", direct=True)).strip()
    ok(clean.docker("commit", "--change", f"LABEL ds01.user={BOB}", seed, base, direct=True))
    yield base
    clean.docker("rm", "-f", seed, direct=True)
    clean.docker("rmi", "-f", base, direct=True)


def test_a_base_image_label_does_not_give_alices_build_steps_to_bob(clean, bobs_base):
    """Alice's legacy build FROM bob's labelled base runs its RUN steps in containers
    dockerd labels from the image. They are not bob's: he does not list them, cannot exec,
    copy out of or into them."""
    ctx = temp_dir("ds01-r2b-")
    os.chmod(ctx, 0o755)
    (ctx / "secret").write_text("alice-secret\n")
    (ctx / "Dockerfile").write_text(f"FROM {bobs_base}\nCOPY secret /secret\nRUN sleep 8\n")
    for name in ("secret", "Dockerfile"):
        os.chmod(ctx / name, 0o644)
    env = [f"DOCKER_HOST={clean.gateway}", "HOME=/tmp", "DOCKER_BUILDKIT=0", "PATH=/usr/bin:/bin"]
    tag = f"{ALICE}/secret-project:{uuid.uuid4().hex[:6]}"
    build = subprocess.Popen(
        ["runuser", "-u", ALICE, "--", "env", *env, "docker", "build", "-t", tag, str(ctx)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        step = ""
        deadline = time.monotonic() + 60
        while not step and time.monotonic() < deadline and build.poll() is None:
            step = ok(clean.docker("ps", "-q", "--no-trunc", direct=True)).strip()
            time.sleep(0.2)
        assert step, "the build's RUN step was not seen running"
        assert inspect(clean, step)["Config"]["Labels"].get("ds01.user") == BOB  # the premise
        assert step not in clean.docker("ps", "-q", "--no-trunc", user=BOB).stdout
        for attempt in (
            ("exec", step, "cat", "/secret"),
            ("cp", f"{step}:/secret", "-"),
            ("cp", "/etc/hostname", f"{step}:/planted-by-bob"),
            ("inspect", step),
        ):
            tried = clean.docker(*attempt, user=BOB)
            assert tried.returncode != 0 and "alice-secret" not in tried.stdout, attempt
            assert "no such" in tried.stderr.lower(), tried.stderr
        out, _ = build.communicate(timeout=120)
        assert build.returncode == 0, out
        planted = clean.docker("run", "--rm", tag, "ls", "/planted-by-bob", user=ALICE)
        assert planted.returncode != 0, "bob planted a file in alice's image"
    finally:
        if build.poll() is None:
            build.kill()
        clean.docker("rmi", "-f", tag, direct=True)


def test_a_base_image_label_does_not_show_bob_alices_image_events(clean, bobs_base):
    """Image events carry the image's labels: alice tagging bob's labelled base into her
    namespace must not reach bob's `docker events`."""
    since = str(int(time.time()) - 5)
    tag = f"{ALICE}/secret-project:{uuid.uuid4().hex[:6]}"
    try:
        ok(clean.docker("tag", bobs_base, tag, user=ALICE))
        until = str(int(time.time()) + 1)
        shown = clean.docker("events", "--since", since, "--until", until, user=BOB)
        assert shown.returncode == 0, shown.stderr
        assert "secret-project" not in shown.stdout, shown.stdout
        asked = clean.docker(
            "events", "--since", since, "--until", until, "--filter", "type=image", user=BOB
        )
        assert asked.returncode != 0 and "your containers only" in asked.stderr, asked.stderr
    finally:
        clean.docker("rmi", "-f", tag, direct=True)


def test_one_student_cannot_take_every_network_address_pool(clean):
    """dockerd has ~31 address pools for all networks: bob may hold 8 (the default
    max_networks), and alice can still create hers."""
    tag = uuid.uuid4().hex[:6]
    made: list[str] = []
    held = ok(
        clean.docker("network", "ls", "-q", "--filter", f"label=ds01.user={BOB}", direct=True)
    )
    try:
        for i in range(8 - len(held.split())):  # other tests may have left bob some
            name = f"r2x-{tag}-{i}"
            ok(clean.docker("network", "create", name, user=BOB))
            made.append(name)
        ninth = clean.docker("network", "create", f"r2x-{tag}-9", user=BOB)
        assert ninth.returncode != 0 and "you already have 8 networks" in ninth.stderr
        ok(clean.docker("network", "create", f"r2x-{tag}-alice", user=ALICE))
        made.append(f"r2x-{tag}-alice")
    finally:
        if made:
            removed = clean.docker("network", "rm", *made, direct=True)
            assert removed.returncode == 0, removed.stderr  # a left-over one leaks a host bridge
