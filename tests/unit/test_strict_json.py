"""Strict JSON for Docker bodies: parse as dockerd would, refuse whatever it could read otherwise."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from policy.strict_json import (
    CONTAINER_CREATE,
    CONTAINER_UPDATE,
    EXEC_CREATE,
    EXEC_START,
    NETWORK_CONNECT,
    NETWORK_CREATE,
    VOLUME_CREATE,
    BodyError,
    check_shape,
    dumps_canonical,
    loads_strict,
)

# What `docker run -it --rm --gpus 1 -v /home/alice/data:/data -e WANDB_MODE=offline
# --label project=thesis -p 8888:8888 --shm-size 2g pytorch/pytorch python train.py` sends
# (docker CLI 24, API 1.43): every Config/HostConfig field, zero values included.
DOCKER_RUN_BODY = """\
{"Hostname":"","Domainname":"","User":"","AttachStdin":true,"AttachStdout":true,
"AttachStderr":true,"ExposedPorts":{"8888/tcp":{}},"Tty":true,"OpenStdin":true,"StdinOnce":true,
"Env":["WANDB_MODE=offline"],"Cmd":["python","train.py"],"Image":"pytorch/pytorch",
"Volumes":{},"WorkingDir":"","Entrypoint":null,"OnBuild":null,"Labels":{"project":"thesis"},
"HostConfig":{"Binds":["/home/alice/data:/data"],"ContainerIDFile":"",
"LogConfig":{"Type":"","Config":{}},"NetworkMode":"default",
"PortBindings":{"8888/tcp":[{"HostIp":"","HostPort":"8888"}]},
"RestartPolicy":{"Name":"no","MaximumRetryCount":0},"AutoRemove":true,"VolumeDriver":"",
"VolumesFrom":null,"ConsoleSize":[50,200],"CapAdd":null,"CapDrop":null,"CgroupnsMode":"",
"Dns":[],"DnsOptions":[],"DnsSearch":[],"ExtraHosts":null,"GroupAdd":null,"IpcMode":"",
"Cgroup":"","Links":null,"OomScoreAdj":0,"PidMode":"","Privileged":false,
"PublishAllPorts":false,"ReadonlyRootfs":false,"SecurityOpt":null,"UTSMode":"","UsernsMode":"",
"ShmSize":2147483648,"Isolation":"","CpuShares":0,"Memory":0,"NanoCpus":0,"CgroupParent":"",
"BlkioWeight":0,"BlkioWeightDevice":[],"BlkioDeviceReadBps":[],"BlkioDeviceWriteBps":[],
"BlkioDeviceReadIOps":[],"BlkioDeviceWriteIOps":[],"CpuPeriod":0,"CpuQuota":0,
"CpuRealtimePeriod":0,"CpuRealtimeRuntime":0,"CpusetCpus":"","CpusetMems":"","Devices":[],
"DeviceCgroupRules":null,
"DeviceRequests":[{"Driver":"","Count":1,"DeviceIDs":null,"Capabilities":[["gpu"]],"Options":{}}],
"MemoryReservation":0,"MemorySwap":0,"MemorySwappiness":null,"OomKillDisable":null,
"PidsLimit":null,"Ulimits":[],"CpuCount":0,"CpuPercent":0,"IOMaximumIOps":0,
"IOMaximumBandwidth":0,"MaskedPaths":null,"ReadonlyPaths":null},
"NetworkingConfig":{"EndpointsConfig":{}}}
"""

# What docker-py 7.1 sends for `client.containers.create("pytorch/pytorch:latest",
# ["python", "train.py"], environment={"A": "1"}, labels={"ds01.project": "x"}, mem_limit="1g",
# shm_size="2g", nano_cpus=2_000_000_000, ports={8888: 8888}, auto_remove=True,
# volumes=["/home/alice/data:/data:ro"], working_dir="/work", device_requests=[
# DeviceRequest(count=1, capabilities=[["gpu"]])])`: None values are dropped by the client.
DOCKER_PY_BODY = """\
{"ExposedPorts": {"8888/tcp": {}}, "Tty": false, "OpenStdin": false, "StdinOnce": false,
"AttachStdin": false, "AttachStdout": false, "AttachStderr": false, "Env": ["A=1"],
"Cmd": ["python", "train.py"], "Image": "pytorch/pytorch:latest", "Volumes": {"/data": {}},
"NetworkDisabled": false, "WorkingDir": "/work", "HostConfig": {"Memory": 1073741824,
"ShmSize": 2147483648, "NetworkMode": "default", "Binds": ["/home/alice/data:/data:ro"],
"PortBindings": {"8888/tcp": [{"HostIp": "", "HostPort": "8888"}]}, "AutoRemove": true,
"NanoCpus": 2000000000, "DeviceRequests": [{"Driver": "", "Count": 1, "DeviceIDs": [],
"Capabilities": [["gpu"]], "Options": {}}]}, "Labels": {"ds01.project": "x"}}
"""

# docker-py 7.1 for `client.containers.create("busybox", "echo hi", network="mynet")`.
DOCKER_PY_NETWORK_BODY = """\
{"Tty": false, "OpenStdin": false, "StdinOnce": false, "AttachStdin": false,
"AttachStdout": true, "AttachStderr": true, "Cmd": ["echo", "hi"], "Image": "busybox",
"NetworkDisabled": false, "HostConfig": {"NetworkMode": "mynet"},
"NetworkingConfig": {"mynet": null}}
"""


def refused(value: Any, shape: Any) -> str:
    """The BodyError message check_shape gives for ``value``."""
    with pytest.raises(BodyError) as info:
        check_shape(value, shape)
    return str(info.value)


# ---- loads_strict --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"Image":"busybox"}', {"Image": "busybox"}),
        ('{"Image":"busybox"}', {"Image": "busybox"}),
        (b' {"a": [1, 2.5, "x", true, null]} \n', {"a": [1, 2.5, "x", True, None]}),
        ('{"Labels":{"caf\u00e9":"\u00fc"}}'.encode(), {"Labels": {"caf\u00e9": "\u00fc"}}),
        (b'{"a":"\\u00e9"}', {"a": "\u00e9"}),
        (b"[]", []),
        (b"null", None),
    ],
)
def test_loads_strict_accepts_plain_json(raw: bytes | str, expected: Any) -> None:
    """Ordinary JSON (bytes or text, surrounding whitespace allowed) parses as usual."""
    assert loads_strict(raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"a":1,"a":2}', "duplicate key 'a' in the JSON body"),
        (b'{"Image":"x","Image":"x"}', "duplicate key 'Image' in the JSON body"),
        (b'{"HostConfig":{"Privileged":false,"Privileged":true}}', "duplicate key 'Privileged'"),
        (b'{"Labels":{"a":"1","a":"2"}}', "duplicate key 'a'"),
        (b'[{"x":1},{"y":{"z":1,"z":1}}]', "duplicate key 'z'"),
        (b'{"Privil\\u0065ged":1,"Privileged":2}', "duplicate key 'Privileged'"),
        (b"NaN", "NaN is not valid JSON"),
        (b'{"Memory":NaN}', "NaN is not valid JSON"),
        (b'{"Memory":Infinity}', "Infinity is not valid JSON"),
        (b'{"Memory":-Infinity}', "-Infinity is not valid JSON"),
        (b'{"Image":"\xff"}', "the JSON body is not valid UTF-8"),
        (b'{"Image":"\xc3"}', "the JSON body is not valid UTF-8"),
        (b"\xef\xbb\xbf{}", "the JSON body starts with a byte-order mark"),
        ("\ufeff{}", "the JSON body starts with a byte-order mark"),
        (b"{} x", "the JSON body does not parse"),
        (b"{}{}", "the JSON body does not parse"),
        (b'{"Image":"a"}\x00', "the JSON body does not parse"),
        (b"", "the JSON body does not parse"),
        (b"   ", "the JSON body does not parse"),
        (b"{'Image': 'a'}", "the JSON body does not parse"),
        (b'{"Image":"a",}', "the JSON body does not parse"),
        (b"[" * 100_000, "the JSON body does not parse"),
        (b"1" * 5000, "the JSON body does not parse"),
    ],
)
def test_loads_strict_refuses(raw: bytes | str, message: str) -> None:
    """Duplicates (at any depth), NaN/Infinity, bad UTF-8, a BOM and trailing data are refused."""
    with pytest.raises(BodyError) as info:
        loads_strict(raw)
    assert message in str(info.value)


@pytest.mark.parametrize("raw", [b'{"Healthcheck":{"Interval":1e999}}', b"-1e400"])
def test_loads_strict_refuses_overflowing_numbers(raw: bytes) -> None:
    """A number too large for a float64 is refused like the Infinity literal."""
    with pytest.raises(BodyError):
        loads_strict(raw)


def test_body_error_is_a_value_error() -> None:
    """BodyError can be caught as ValueError."""
    assert issubclass(BodyError, ValueError)


# ---- check_shape on CONTAINER_CREATE -------------------------------------------------------


@pytest.mark.parametrize("raw", [DOCKER_RUN_BODY, DOCKER_PY_BODY], ids=["docker-cli", "docker-py"])
def test_accepts_real_client_create_bodies(raw: str) -> None:
    """Bodies the docker CLI and docker-py actually send pass parsing and the shape check."""
    check_shape(loads_strict(raw.replace("\n", "")), CONTAINER_CREATE)


def test_accepts_a_create_body_docker_py_builds_now() -> None:
    """The create body the installed docker-py builds (captured before sending) is accepted."""
    docker = pytest.importorskip("docker")
    client = docker.APIClient(base_url="unix:///nonexistent.sock", version="1.43")
    sent: dict[str, Any] = {}

    class Captured(Exception):
        pass

    def capture(url: str, data: Any = None, **kwargs: Any) -> None:
        sent["url"], sent["data"] = url, data
        raise Captured

    client._post = capture
    host_config = client.create_host_config(
        mem_limit="4g",
        shm_size="1g",
        binds=["/home/alice/data:/data:ro"],
        device_requests=[docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])],
        port_bindings={8888: 8888},
        auto_remove=True,
    )
    with pytest.raises(Captured):
        client.create_container(
            "pytorch/pytorch:latest",
            command=["python", "train.py"],
            environment={"A": "1"},
            labels={"ds01.project": "x"},
            host_config=host_config,
            working_dir="/work",
            volumes=["/data"],
            ports=[8888],
            healthcheck={"test": ["CMD", "true"], "interval": 30_000_000_000},
        )
    assert sent["url"].endswith("/containers/create")
    check_shape(loads_strict(sent["data"]), CONTAINER_CREATE)


def test_accepts_docker_py_body_with_a_network() -> None:
    """docker-py's body for ``network="mynet"`` passes, since dockerd ignores its null key."""
    check_shape(loads_strict(DOCKER_PY_NETWORK_BODY.replace("\n", "")), CONTAINER_CREATE)


@pytest.mark.parametrize(
    "body",
    [
        {"Image": "a", "Labels": {"Privileged": "true", "privileged": "x", "a": "1", "A": "2"}},
        {"Image": "a", "Labels": {"ds01.user": "alice", "com.docker.compose.project": "p"}},
        {"Image": "a", "Labels": {"caf\u00e9": "\u212a", "Bind\u017f": "", "": ""}},
        {"Image": "a", "ExposedPorts": {"80/tcp": {}, "53/udp": {}}, "Volumes": {"/data": {}}},
        {"Image": "a", "HostConfig": {"Sysctls": {"net.ipv4.ip_forward": "1"}}},
        {"Image": "a", "HostConfig": {"Tmpfs": {"/run": "rw,size=64m"}}},
        {"Image": "a", "HostConfig": {"StorageOpt": {"size": "10G"}}},
        {
            "Image": "a",
            "HostConfig": {"LogConfig": {"Type": "json-file", "Config": {"max-size": "1m"}}},
        },
        {"Image": "a", "HostConfig": {"DeviceRequests": [{"Options": {"Any": "thing"}}]}},
        {"Image": "a", "NetworkingConfig": {"EndpointsConfig": {"mynet": {"Aliases": ["x"]}}}},
        {"Image": "a", "Cmd": "echo hi", "Entrypoint": ["/bin/sh", "-c"], "Healthcheck": {"x": 1}},
        {"Image": "a", "HostConfig": None, "Env": None, "Labels": None},
    ],
)
def test_accepts_free_keys_in_maps(body: dict[str, Any]) -> None:
    """Labels, env-like and other map fields take arbitrary keys; ``null`` is fine anywhere."""
    check_shape(body, CONTAINER_CREATE)


CREATE_REFUSED: list[tuple[str, Any, str]] = [
    (
        "case-variant duplicate in HostConfig",
        {"HostConfig": {"Privileged": False, "privileged": True}},
        "keys 'Privileged' and 'privileged' name the same field",
    ),
    (
        "case-variant duplicate at top level",
        {"Image": "a", "IMAGE": "b"},
        "keys 'Image' and 'IMAGE' name the same field",
    ),
    (
        "case-variant duplicate with null",
        {"HostConfig": {"Binds": ["/home/alice:/h"], "binds": None}},
        "keys 'Binds' and 'binds' name the same field",
    ),
    (
        "miscased privileged",
        {"HostConfig": {"privileged": True}},
        "field 'HostConfig.privileged' must be spelled 'Privileged'",
    ),
    (
        "miscased image",
        {"image": "busybox"},
        "field 'image' must be spelled 'Image'",
    ),
    (
        "miscased mount type",
        {"HostConfig": {"Mounts": [{"type": "bind", "Source": "/", "Target": "/h"}]}},
        "field 'HostConfig.Mounts[0].type' must be spelled 'Type'",
    ),
    (
        "miscased bind propagation",
        {"HostConfig": {"Mounts": [{"BindOptions": {"propagation": "rshared"}}]}},
        "field 'HostConfig.Mounts[0].BindOptions.propagation' must be spelled 'Propagation'",
    ),
    (
        "miscased device request count",
        {"HostConfig": {"DeviceRequests": [{"count": -1}]}},
        "field 'HostConfig.DeviceRequests[0].count' must be spelled 'Count'",
    ),
    (
        "long s folds to s (Go matches Bind\u017f to Binds)",
        {"HostConfig": {"Bind\u017f": ["/:/host"]}},
        "field 'HostConfig.Bind\u017f' must be spelled 'Binds'",
    ),
    (
        "Kelvin sign folds to K",
        {"HostConfig": {"\u212aernelMemory": 1}},
        "field 'HostConfig.\u212aernelMemory' must be spelled 'KernelMemory'",
    ),
    (
        "long s next to the real key",
        {"HostConfig": {"Binds": [], "Bind\u017f": ["/:/host"]}},
        "name the same field",
    ),
    (
        "legacy top-level Privileged",
        {"Image": "a", "Privileged": True},
        "unknown field 'Privileged'",
    ),
    ("legacy top-level Binds", {"Image": "a", "Binds": ["/:/host"]}, "unknown field 'Binds'"),
    ("legacy top-level Cpuset", {"Image": "a", "Cpuset": "0-63"}, "unknown field 'Cpuset'"),
    ("legacy top-level Memory", {"Image": "a", "Memory": 1}, "unknown field 'Memory'"),
    ("legacy top-level CapAdd", {"Image": "a", "CapAdd": ["ALL"]}, "unknown field 'CapAdd'"),
    (
        "unknown HostConfig key",
        {"HostConfig": {"Superpowers": True}},
        "unknown field 'HostConfig.Superpowers'",
    ),
    (
        "unknown NetworkingConfig key",
        {"NetworkingConfig": {"Endpoints": {}}},
        "unknown field 'NetworkingConfig.Endpoints'",
    ),
    (
        "string for bool",
        {"HostConfig": {"Privileged": "true"}},
        "HostConfig.Privileged must be a bool",
    ),
    ("int for bool", {"HostConfig": {"Privileged": 1}}, "HostConfig.Privileged must be a bool"),
    ("float for int", {"HostConfig": {"Memory": 1.5}}, "HostConfig.Memory must be a int, not 1.5"),
    ("whole float for int", {"HostConfig": {"ShmSize": 1e3}}, "HostConfig.ShmSize must be a int"),
    ("bool for int", {"HostConfig": {"Memory": True}}, "HostConfig.Memory must be a int, not true"),
    ("string for int", {"HostConfig": {"NanoCpus": "2e9"}}, "HostConfig.NanoCpus must be a int"),
    ("int for string", {"Image": 7}, "Image must be a string"),
    ("string for list", {"HostConfig": {"Binds": "/:/host"}}, "HostConfig.Binds must be a strings"),
    ("mixed list", {"Env": ["A=1", 2]}, "Env must be a strings"),
    (
        "map for list",
        {"HostConfig": {"Mounts": {"Type": "bind"}}},
        "HostConfig.Mounts must be a list",
    ),
    ("list for struct", {"HostConfig": []}, "HostConfig must be a JSON object"),
    ("list for map", {"Labels": ["a=b"]}, "Labels must be a map"),
    (
        "capabilities not a list of lists",
        {"HostConfig": {"DeviceRequests": [{"Capabilities": [["gpu"], "x"]}]}},
        "HostConfig.DeviceRequests[0].Capabilities[1] must be a strings",
    ),
    ("body is a list", [], "the body must be a JSON object"),
    ("body is a string", "busybox", "the body must be a JSON object"),
]


@pytest.mark.parametrize(
    ("body", "message"), [c[1:] for c in CREATE_REFUSED], ids=[c[0] for c in CREATE_REFUSED]
)
def test_create_shape_refuses(body: Any, message: str) -> None:
    """Case variants, folded spellings, unknown or legacy fields and wrong types are refused."""
    assert message in refused(body, CONTAINER_CREATE)


def test_realistic_body_with_a_case_variant_key_is_refused() -> None:
    """A lower-case ``privileged`` appended to a genuine CLI body (dockerd reads the last) fails."""
    body = loads_strict(DOCKER_RUN_BODY.replace("\n", ""))
    body["HostConfig"]["privileged"] = True
    assert (
        refused(body, CONTAINER_CREATE) == "keys 'Privileged' and 'privileged' name the same field"
    )


def test_realistic_body_with_a_legacy_top_level_field_is_refused() -> None:
    """A genuine CLI body plus a top-level ``Binds`` (honoured by old dockerd) is refused."""
    body = loads_strict(DOCKER_RUN_BODY.replace("\n", ""))
    body["Binds"] = ["/:/host"]
    assert refused(body, CONTAINER_CREATE) == "unknown field 'Binds'"


# ---- the other shapes ----------------------------------------------------------------------

OTHER_SHAPES: list[tuple[str, Any, Any, str | None]] = [
    (
        "update ok",
        CONTAINER_UPDATE,
        {"Memory": 1 << 30, "NanoCpus": 10**9, "RestartPolicy": {"Name": "no"}},
        None,
    ),
    ("update miscased", CONTAINER_UPDATE, {"memory": 1}, "must be spelled 'Memory'"),
    ("update privileged", CONTAINER_UPDATE, {"Privileged": True}, "unknown field 'Privileged'"),
    ("exec ok", EXEC_CREATE, {"AttachStdout": True, "Cmd": ["ls"], "Privileged": False}, None),
    (
        "exec miscased",
        EXEC_CREATE,
        {"Cmd": ["sh"], "privileged": True},
        "must be spelled 'Privileged'",
    ),
    (
        "exec variant pair",
        EXEC_CREATE,
        {"Privileged": False, "PRIVILEGED": True},
        "name the same field",
    ),
    ("exec start ok", EXEC_START, {"Detach": False, "Tty": True, "ConsoleSize": [24, 80]}, None),
    (
        "exec start bad size",
        EXEC_START,
        {"ConsoleSize": ["24", "80"]},
        "ConsoleSize[0] must be a int",
    ),
    (
        "volume ok",
        VOLUME_CREATE,
        {"Name": "v", "Driver": "local", "DriverOpts": {"o": "bind"}},
        None,
    ),
    ("volume unknown", VOLUME_CREATE, {"Name": "v", "Opts": {}}, "unknown field 'Opts'"),
    ("network ok", NETWORK_CREATE, {"Name": "n", "Driver": "bridge", "Options": {"x": "y"}}, None),
    (
        "network bad type",
        NETWORK_CREATE,
        {"Name": "n", "Internal": "yes"},
        "Internal must be a bool",
    ),
    ("connect ok", NETWORK_CONNECT, {"Container": "c", "EndpointConfig": {"Aliases": ["a"]}}, None),
    ("connect miscased", NETWORK_CONNECT, {"container": "c"}, "must be spelled 'Container'"),
]


@pytest.mark.parametrize(
    ("shape", "body", "message"), [c[1:] for c in OTHER_SHAPES], ids=[c[0] for c in OTHER_SHAPES]
)
def test_other_body_shapes(shape: Any, body: Any, message: str | None) -> None:
    """Update, exec, volume and network bodies get the same exact-spelling and type checks."""
    if message is None:
        check_shape(body, shape)
    else:
        assert message in refused(body, shape)


# ---- dumps_canonical -----------------------------------------------------------------------


@pytest.mark.parametrize("raw", [DOCKER_RUN_BODY, DOCKER_PY_BODY], ids=["docker-cli", "docker-py"])
def test_dumps_canonical_round_trips_client_bodies(raw: str) -> None:
    """Canonical bytes of a parsed body parse back (strictly) to the same value, same key order."""
    value = loads_strict(raw.replace("\n", ""))
    again = loads_strict(dumps_canonical(value))
    assert again == value
    assert list(again) == list(value)
    assert list(again["HostConfig"]) == list(value["HostConfig"])


@pytest.mark.parametrize(
    "value",
    [
        {"Labels": {"caf\u00e9": "\u212a\u017f", "emoji": "\U0001f680"}},
        {"a": [1, -2, 3.25, True, False, None, "", {}, []]},
        {"Cmd": ["sh", "-c", 'echo "quoted" \\ back\nslash']},
        {"n": 2**62, "f": 1e-300},
    ],
)
def test_dumps_canonical_round_trips_values(value: Any) -> None:
    """Unicode, escapes, nesting and large numbers survive dumps_canonical then loads_strict."""
    assert loads_strict(dumps_canonical(copy.deepcopy(value))) == value


def test_dumps_canonical_is_compact_utf8() -> None:
    """Output has no spaces between tokens and keeps non-ASCII as UTF-8, not \\u escapes."""
    out = dumps_canonical({"Image": "caf\u00e9", "Cmd": ["a", "b"]})
    assert out == '{"Image":"caf\u00e9","Cmd":["a","b"]}'.encode()
    assert json.loads(out) == {"Image": "caf\u00e9", "Cmd": ["a", "b"]}


def test_lone_surrogate_is_refused_or_round_trips() -> None:
    """A body loads_strict accepts can always be serialised by dumps_canonical."""
    try:
        value = loads_strict(b'{"Image":"a","Labels":{"x":"\\ud800"}}')
    except BodyError:
        return
    assert loads_strict(dumps_canonical(value)) == value
