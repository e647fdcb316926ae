"""The escape table: one row per way out of a container's box, each with its exact denial."""

from __future__ import annotations

import json

import pytest

from policy.engine import decide
from policy.state import Request, State

from .conftest import ALICE, BOB, cli_create_body, container, create_request

HOME_STATE = State(cgroup_driver="cgroupfs")


def _symlinks(path: str) -> str:
    # /home/alice/sock -> /var/run/docker.sock; /home/alice/etc -> /etc
    table = {"/home/alice/sock": "/var/run/docker.sock", "/home/alice/etc": "/etc"}
    for link, real in table.items():
        if path == link or path.startswith(link + "/"):
            return real + path[len(link) :]
    return path


LINKY = State(cgroup_driver="cgroupfs", realpath=_symlinks)

# (row id, HostConfig changes, state, exact message)
HOST_ESCAPES = [
    (
        "privileged",
        {"Privileged": True},
        HOME_STATE,
        "ds01: --privileged is not allowed for group students. To fix: run without --privileged",
    ),
    (
        "cap_add",
        {"CapAdd": ["SYS_ADMIN"]},
        HOME_STATE,
        "ds01: --cap-add SYS_ADMIN is not allowed for group students. To fix: drop --cap-add, or ask an admin to grant it in the DS01 policy (allow: [...])",
    ),
    (
        "devices",
        {
            "Devices": [
                {
                    "PathOnHost": "/dev/nvidia0",
                    "PathInContainer": "/dev/nvidia0",
                    "CgroupPermissions": "rwm",
                }
            ]
        },
        HOME_STATE,
        "ds01: --device is not allowed for group students. To fix: ask for GPUs with --gpus, not --device",
    ),
    (
        "device_cgroup_rules",
        {"DeviceCgroupRules": ["c 195:* rwm"]},
        HOME_STATE,
        "ds01: --device-cgroup-rule is not allowed for group students. To fix: drop it, or ask an admin to grant it in the DS01 policy (allow: [...])",
    ),
    (
        "seccomp_unconfined",
        {"SecurityOpt": ["seccomp=unconfined"]},
        HOME_STATE,
        "ds01: --security-opt seccomp=unconfined is not allowed for group students (only no-new-privileges is). To fix: drop --security-opt seccomp=unconfined",
    ),
    (
        "apparmor_unconfined",
        {"SecurityOpt": ["no-new-privileges", "apparmor=unconfined"]},
        HOME_STATE,
        "ds01: --security-opt apparmor=unconfined is not allowed for group students (only no-new-privileges is). To fix: drop --security-opt apparmor=unconfined",
    ),
    (
        "pid_host",
        {"PidMode": "host"},
        HOME_STATE,
        "ds01: --pid=host is not allowed for group students. To fix: drop --pid=host",
    ),
    (
        "ipc_host",
        {"IpcMode": "host"},
        HOME_STATE,
        "ds01: --ipc=host is not allowed for group students. To fix: drop --ipc=host",
    ),
    (
        "network_host",
        {"NetworkMode": "host"},
        HOME_STATE,
        "ds01: --network=host is not allowed for group students. To fix: drop --network=host",
    ),
    (
        "uts_host",
        {"UTSMode": "host"},
        HOME_STATE,
        "ds01: --uts=host is not allowed for group students. To fix: drop --uts=host",
    ),
    (
        "userns_host",
        {"UsernsMode": "host"},
        HOME_STATE,
        "ds01: --userns=host is not allowed for group students. To fix: drop --userns=host",
    ),
    (
        "cgroupns_host",
        {"CgroupnsMode": "host"},
        HOME_STATE,
        "ds01: --cgroupns=host is not allowed for group students. To fix: drop --cgroupns=host",
    ),
    (
        "pid_other_container",
        {"PidMode": "container:carols"},
        HOME_STATE,
        "No such container: carols",
    ),
    (
        "network_other_container",
        {"NetworkMode": "container:carols"},
        HOME_STATE,
        "No such container: carols",
    ),
    (
        "ipc_other_container",
        {"IpcMode": "container:carols"},
        HOME_STATE,
        "No such container: carols",
    ),
    ("volumes_from_other", {"VolumesFrom": ["carols:ro"]}, HOME_STATE, "No such container: carols"),
    (
        "runtime",
        {"Runtime": "nvidia"},
        HOME_STATE,
        "ds01: --runtime nvidia is not allowed for group students. To fix: drop --runtime; GPUs are given with --gpus",
    ),
    (
        "sysctls",
        {"Sysctls": {"kernel.shm_rmid_forced": "1"}},
        HOME_STATE,
        "ds01: --sysctl is not allowed for group students. To fix: drop --sysctl, or ask an admin to grant it in the DS01 policy (allow: [...])",
    ),
    (
        "cgroup_parent",
        {"CgroupParent": "/"},
        HOME_STATE,
        "ds01: --cgroup-parent is chosen by DS01 (your containers run in your own cgroup). To fix: drop --cgroup-parent",
    ),
    (
        "cgroup_of_another_container",
        {"Cgroup": "container:victim"},
        HOME_STATE,
        "ds01: HostConfig.Cgroup 'container:victim' is chosen by DS01 (your own cgroup). To fix: leave HostConfig.Cgroup empty",
    ),
    (
        "bind_root",
        {"Binds": ["/:/host"]},
        HOME_STATE,
        "ds01: mounting / would expose the Docker/DS01 socket /var/run/docker.sock. To fix: mount a folder under your home directory instead",
    ),
    (
        "bind_etc",
        {"Binds": ["/etc:/mnt"]},
        HOME_STATE,
        "ds01: bind mount of /etc is outside the paths you may mount (/home/alice, /data/shared). To fix: mount a folder under your home directory instead",
    ),
    (
        "bind_other_home",
        {"Binds": ["/home/bob:/mnt"]},
        HOME_STATE,
        "ds01: bind mount of /home/bob is outside the paths you may mount (/home/alice, /data/shared). To fix: mount a folder under your home directory instead",
    ),
    (
        "bind_prefix_trick",
        {"Binds": ["/home/alice2:/mnt"]},
        HOME_STATE,
        "ds01: bind mount of /home/alice2 is outside the paths you may mount (/home/alice, /data/shared). To fix: mount a folder under your home directory instead",
    ),
    (
        "bind_dotdot",
        {"Binds": ["/home/alice/../bob:/mnt"]},
        HOME_STATE,
        "ds01: bind mount of /home/alice/../bob (resolves to /home/bob) is outside the paths you may mount (/home/alice, /data/shared). To fix: mount a folder under your home directory instead",
    ),
    (
        "bind_docker_socket",
        {"Binds": ["/var/run/docker.sock:/var/run/docker.sock"]},
        HOME_STATE,
        "ds01: mounting /var/run/docker.sock would expose the Docker/DS01 socket /var/run/docker.sock. To fix: mount a folder under your home directory instead",
    ),
    (
        "bind_run_dir",
        {"Binds": ["/run:/r"]},
        HOME_STATE,
        "ds01: mounting /run would expose the Docker/DS01 socket /run/docker.sock. To fix: mount a folder under your home directory instead",
    ),
    (
        "bind_plugin_socket",
        {"Binds": ["/run/docker/plugins/ds01.sock:/s"]},
        HOME_STATE,
        "ds01: mounting /run/docker/plugins/ds01.sock would expose the Docker/DS01 socket /run/docker/plugins. To fix: mount a folder under your home directory instead",
    ),
    (
        "bind_symlink_to_socket",
        {"Binds": ["/home/alice/sock:/s"]},
        LINKY,
        "ds01: mounting /home/alice/sock (resolves to /var/run/docker.sock) would expose the Docker/DS01 socket /var/run/docker.sock. To fix: mount a folder under your home directory instead",
    ),
    (
        "bind_symlink_to_etc",
        {"Binds": ["/home/alice/etc/shadow:/s"]},
        LINKY,
        "ds01: bind mount of /home/alice/etc/shadow (resolves to /etc/shadow) is outside the paths you may mount (/home/alice, /data/shared). To fix: mount a folder under your home directory instead",
    ),
    (
        "mount_bind_etc",
        {"Mounts": [{"Type": "bind", "Source": "/etc", "Target": "/e"}]},
        HOME_STATE,
        "ds01: bind mount of /etc is outside the paths you may mount (/home/alice, /data/shared). To fix: mount a folder under your home directory instead",
    ),
    (
        "mount_bind_socket",
        {"Mounts": [{"Type": "bind", "Source": "/var/run/docker.sock", "Target": "/s"}]},
        HOME_STATE,
        "ds01: mounting /var/run/docker.sock would expose the Docker/DS01 socket /var/run/docker.sock. To fix: mount a folder under your home directory instead",
    ),
    (
        "mount_volume_local_bind",
        {
            "Mounts": [
                {
                    "Type": "volume",
                    "Source": "v",
                    "Target": "/v",
                    "VolumeOptions": {
                        "DriverConfig": {
                            "Name": "local",
                            "Options": {"type": "none", "o": "bind", "device": "/etc"},
                        }
                    },
                }
            ]
        },
        HOME_STATE,
        "ds01: local volumes with type/o/device options can mount any host path. To fix: use a plain named volume, or bind-mount a folder under your home directory",
    ),
    (
        "mount_volume_plugin_driver",
        {
            "Mounts": [
                {
                    "Type": "volume",
                    "Source": "v",
                    "Target": "/v",
                    "VolumeOptions": {"DriverConfig": {"Name": "sshfs"}},
                }
            ]
        },
        HOME_STATE,
        "ds01: volume driver 'sshfs' is not allowed. To fix: use the local driver",
    ),
    (
        "mount_npipe",
        {"Mounts": [{"Type": "npipe", "Source": "x", "Target": "/x"}]},
        HOME_STATE,
        "ds01: mounts of type 'npipe' are not allowed. To fix: use bind, volume or tmpfs",
    ),
    (
        "system_paths_unmasked",
        {"MaskedPaths": [], "ReadonlyPaths": []},
        HOME_STATE,
        "ds01: changing the masked or read-only /proc paths (--security-opt systempaths=...) is not allowed. To fix: drop --security-opt systempaths=unconfined",
    ),
    (
        "oom_score_negative",
        {"OomScoreAdj": -1000},
        HOME_STATE,
        "ds01: a negative --oom-score-adj would make the kernel kill other users' processes first. To fix: drop --oom-score-adj or use a value >= 0",
    ),
    (
        "oom_kill_disable",
        {"OomKillDisable": True},
        HOME_STATE,
        "ds01: --oom-kill-disable is not allowed. To fix: drop --oom-kill-disable",
    ),
    (
        "memory_over_cap",
        {"Memory": 64 * 2**30},
        HOME_STATE,
        "ds01: --memory 64g is over the per-container limit of 16g for group students. To fix: ask for at most --memory 16g",
    ),
    (
        "cpus_over_cap",
        {"NanoCpus": 8 * 10**9},
        HOME_STATE,
        "ds01: --cpus 8 is over the per-container limit of 4 CPUs for group students. To fix: ask for at most --cpus 4",
    ),
    (
        "cpu_quota_over_cap",
        {"CpuQuota": 800000, "CpuPeriod": 100000},
        HOME_STATE,
        "ds01: --cpus 8 is over the per-container limit of 4 CPUs for group students. To fix: ask for at most --cpus 4",
    ),
    (
        "pids_over_cap",
        {"PidsLimit": 100000},
        HOME_STATE,
        "ds01: --pids-limit 100000 is over the per-container limit of 2048 for group students. To fix: ask for at most --pids-limit 2048",
    ),
    (
        "shm_over_cap",
        {"ShmSize": 8 * 2**30},
        HOME_STATE,
        "ds01: --shm-size 8g is over the per-container limit of 2g for group students. To fix: ask for at most --shm-size 2g",
    ),
    (
        "memory_swap",
        {"Memory": 2**30, "MemorySwap": -1},
        HOME_STATE,
        "ds01: --memory-swap is not allowed: containers get no swap beyond --memory. To fix: drop --memory-swap",
    ),
    (
        "log_driver",
        {"LogConfig": {"Type": "syslog", "Config": {"syslog-address": "udp://1.2.3.4:514"}}},
        HOME_STATE,
        "ds01: --log-driver syslog is not allowed. To fix: use the default log driver",
    ),
    (
        "annotations",
        {"Annotations": {"run.oci.keep_original_groups": "1"}},
        HOME_STATE,
        "ds01: --annotation is not allowed for group students. To fix: drop --annotation",
    ),
    (
        "gpu_restart_always",
        {
            "DeviceRequests": [
                {
                    "Driver": "",
                    "Count": 1,
                    "DeviceIDs": None,
                    "Capabilities": [["gpu"]],
                    "Options": {},
                }
            ],
            "RestartPolicy": {"Name": "always", "MaximumRetryCount": 0},
        },
        HOME_STATE,
        "ds01: --restart always is not allowed with GPUs: dockerd would restart the container without asking DS01 for its GPU. To fix: drop --restart (DS01 keeps your GPU for the hold time after a stop)",
    ),
]


@pytest.mark.parametrize("row", HOST_ESCAPES, ids=[r[0] for r in HOST_ESCAPES])
def test_host_config_escape_is_denied_with_its_reason(row, limits_of):
    """Every HostConfig escape is refused for a student with its exact message."""
    _, host, st, message = row
    decision = decide(create_request(cli_create_body(**host)), ALICE, limits_of(ALICE), st)
    assert not decision.allowed
    assert decision.message == message


# Body-level tricks: (row id, raw body, exact message)
def _raw(text: str) -> bytes:
    return text.encode()


BASE = json.dumps(cli_create_body())
RAW_ESCAPES = [
    (
        "case_variant_duplicate",
        _raw(BASE[:-1] + ',"hostconfig":{"Privileged":true}}'),
        "ds01: refused an unclear request body: keys 'HostConfig' and 'hostconfig' name the same field. To fix: send plain Docker API JSON",
    ),
    (
        "nested_case_variant",
        _raw(BASE.replace('"Privileged": false', '"Privileged": false, "privileged": true')),
        "ds01: refused an unclear request body: keys 'Privileged' and 'privileged' name the same field. To fix: send plain Docker API JSON",
    ),
    (
        "miscased_alone",
        _raw(BASE.replace('"Privileged": false', '"privileged": true')),
        "ds01: refused an unclear request body: field 'HostConfig.privileged' must be spelled 'Privileged'. To fix: send plain Docker API JSON",
    ),
    (
        "exact_duplicate",
        _raw(BASE.replace('"Privileged": false', '"Privileged": false, "Privileged": true')),
        "ds01: refused an unclear request body: duplicate key 'Privileged' in the JSON body. To fix: send plain Docker API JSON",
    ),
    (
        "unicode_folded_key",
        _raw(BASE.replace('"Binds": null', '"Bind\\u017f": ["/:/host"]')),
        "ds01: refused an unclear request body: field 'HostConfig.Bind\u017f' must be spelled 'Binds'. To fix: send plain Docker API JSON",
    ),
    (
        "legacy_top_level_hostconfig",
        _raw('{"Image":"busybox","Privileged":true,"Binds":["/:/host"]}'),
        "ds01: refused an unclear request body: unknown field 'Privileged'. To fix: send plain Docker API JSON",
    ),
    (
        "legacy_cpuset",
        _raw('{"Image":"busybox","Cpuset":"0"}'),
        "ds01: refused an unclear request body: unknown field 'Cpuset'. To fix: send plain Docker API JSON",
    ),
    (
        "wrong_type",
        _raw(BASE.replace('"Privileged": false', '"Privileged": "true"')),
        'ds01: refused an unclear request body: HostConfig.Privileged must be a bool, not "true". To fix: send plain Docker API JSON',
    ),
    (
        "not_json",
        b"{not json",
        "ds01: refused an unclear request body: the JSON body does not parse (Expecting property name enclosed in double quotes: line 1 column 2 (char 1)). To fix: send plain Docker API JSON",
    ),
    (
        "not_an_object",
        b"[]",
        "ds01: refused an unclear request body: the body must be a JSON object. To fix: send plain Docker API JSON",
    ),
    ("no_image", b"{}", "ds01: the create request names no image. To fix: give an image name"),
]


@pytest.mark.parametrize("row", RAW_ESCAPES, ids=[r[0] for r in RAW_ESCAPES])
def test_body_trick_is_denied_with_its_reason(row, limits_of):
    """Bodies dockerd might read differently from DS01 are refused, saying why."""
    _, raw, message = row
    decision = decide(create_request(None, raw=raw), ALICE, limits_of(ALICE), HOME_STATE)
    assert not decision.allowed
    assert decision.message == message


def _req(method: str, target: str, body: object = None, headers: dict | None = None) -> Request:
    data = (
        None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    )
    return Request(method, target, headers or {"Content-Type": "application/json"}, data)


# Requests other than create: (row id, request, state, exact message)
OTHER_ESCAPES = [
    (
        "no_body_create",
        _req("POST", "/v1.41/containers/create"),
        HOME_STATE,
        "ds01: POST /containers/create arrived without its JSON body (bodies over 1 MiB, chunked, or not sent as application/json are not shown to DS01). To fix: send the request with Content-Type: application/json and a body under 1 MiB",
    ),
    (
        "encoded_path",
        _req("GET", "/v1.41/containers/abc%2F..%2Fx/json"),
        HOME_STATE,
        "ds01: percent-encoded characters in the request path are not accepted. To fix: use the docker CLI or an SDK, unmodified",
    ),
    (
        "doubled_slash",
        _req("GET", "/v1.41//containers/json"),
        HOME_STATE,
        "ds01: the request path is not in canonical form (doubled slash or dot segment). To fix: use the docker CLI or an SDK, unmodified",
    ),
    (
        "unknown_version",
        _req("GET", "/v7.0/containers/json"),
        HOME_STATE,
        "ds01: API version 7.0 is not supported (DS01 accepts 1.24 to 1.54). To fix: use the docker CLI or an SDK, unmodified",
    ),
    (
        "legacy_version",
        _req("GET", "/v1.19/containers/json"),
        HOME_STATE,
        "ds01: API version 1.19 is not supported (DS01 accepts 1.24 to 1.54). To fix: use the docker CLI or an SDK, unmodified",
    ),
    (
        "cl_and_te",
        _req(
            "POST",
            "/v1.41/containers/abc/stop",
            headers={"Content-Length": "0", "Transfer-Encoding": "chunked"},
        ),
        State(target=container("alice")),
        "ds01: a request with both Content-Length and Transfer-Encoding. To fix: send one framing header",
    ),
    (
        "start_with_body",
        _req("POST", "/v1.41/containers/abc/start", {"Privileged": True}),
        State(target=container("alice")),
        "ds01: POST /containers/{id}/start takes no request body. To fix: send the request without a body, as the docker CLI does",
    ),
    (
        "plugins",
        _req("POST", "/v1.41/plugins/pull?remote=x"),
        HOME_STATE,
        "ds01: POST /plugins/pull is for admins only. To fix: ask an admin of this server",
    ),
    (
        "swarm",
        _req("POST", "/v1.41/swarm/init", {}),
        HOME_STATE,
        "ds01: POST /swarm/init is for admins only. To fix: ask an admin of this server",
    ),
    (
        "services",
        _req("POST", "/v1.41/services/create", {}),
        HOME_STATE,
        "ds01: POST /services/create is for admins only. To fix: ask an admin of this server",
    ),
    (
        "nodes",
        _req("GET", "/v1.41/nodes"),
        HOME_STATE,
        "ds01: GET /nodes is for admins only. To fix: ask an admin of this server",
    ),
    (
        "secrets",
        _req("POST", "/v1.41/secrets/create", {}),
        HOME_STATE,
        "ds01: POST /secrets/create is for admins only. To fix: ask an admin of this server",
    ),
    (
        "configs",
        _req("GET", "/v1.41/configs"),
        HOME_STATE,
        "ds01: GET /configs is for admins only. To fix: ask an admin of this server",
    ),
    (
        "exec_privileged",
        _req("POST", "/v1.41/containers/abc/exec", {"Cmd": ["sh"], "Privileged": True}),
        State(target=container("alice")),
        "ds01: docker exec --privileged is not allowed for group students. To fix: run docker exec without --privileged",
    ),
    (
        "exec_other_users",
        _req("POST", "/v1.41/containers/abc/exec", {"Cmd": ["sh"]}),
        State(target=container("carol")),
        "No such container: abc",
    ),
    (
        "stop_other_users",
        _req("POST", "/v1.41/containers/abc/stop"),
        State(target=container("carol")),
        "No such container: abc",
    ),
    (
        "inspect_unowned",
        _req("GET", "/v1.41/containers/abc/json"),
        State(target=container(None)),
        "No such container: abc",
    ),
    (
        "exec_start_other_users",
        _req("POST", "/v1.41/exec/e1/start", {"Detach": False}),
        State(target=container("carol")),
        "No such exec instance: e1",
    ),
    (
        "volume_bind_options",
        _req(
            "POST",
            "/v1.41/volumes/create",
            {
                "Name": "v",
                "Driver": "local",
                "DriverOpts": {"type": "none", "o": "bind", "device": "/etc"},
            },
        ),
        HOME_STATE,
        "ds01: local volumes with type/o/device options can mount any host path. To fix: use a plain named volume, or bind-mount a folder under your home directory",
    ),
    (
        "volume_other_users",
        _req("DELETE", "/v1.41/volumes/v"),
        State(target=container("carol")),
        "No such volume: v",
    ),
    (
        "update_raise_memory",
        _req("POST", "/v1.41/containers/abc/update", {"Memory": 64 * 2**30}),
        State(target=container("alice")),
        "ds01: docker update --memory would raise your limit above group students's. To fix: keep --memory at or below the per-container limit (ds01 limits)",
    ),
    (
        "update_unlimited_pids",
        _req("POST", "/v1.41/containers/abc/update", {"PidsLimit": -1}),
        State(target=container("alice")),
        "ds01: docker update --pids-limit would raise your limit above group students's. To fix: keep --pids-limit at or below the per-container limit (ds01 limits)",
    ),
    (
        "build_network_host",
        _req(
            "POST", "/v1.41/build?networkmode=host", headers={"Content-Type": "application/x-tar"}
        ),
        HOME_STATE,
        "ds01: docker build --network host is not allowed (RUN steps would share the host's "
        "network). To fix: drop --network host; builds reach the network through the default "
        "network",
    ),
    (
        "system_df",
        _req("GET", "/v1.41/system/df"),
        HOME_STATE,
        "ds01: GET /system/df is for admins only. To fix: ask an admin of this server",
    ),
]


@pytest.mark.parametrize("row", OTHER_ESCAPES, ids=[r[0] for r in OTHER_ESCAPES])
def test_request_escape_is_denied_with_its_reason(row, limits_of):
    """Every non-create escape is refused with its exact message (others' objects: not found)."""
    _, request, st, message = row
    decision = decide(request, ALICE, limits_of(ALICE), st)
    assert not decision.allowed
    assert decision.message == message


def test_policy_grant_opens_one_feature_only(limits_of):
    """bob's `allow: [sysctls]` lets his sysctls through, but not --privileged."""
    body = cli_create_body(Sysctls={"net.ipv4.ip_forward": "1"})
    assert decide(create_request(body), BOB, limits_of(BOB), HOME_STATE).allowed
    body = cli_create_body(Sysctls={"net.ipv4.ip_forward": "1"}, Privileged=True)
    assert not decide(create_request(body), BOB, limits_of(BOB), HOME_STATE).allowed
