"""Root inside a container is never power on the host: run_as, binds, docker cp, ports, CPU.

Exhaustive tables for the pure rules of issue 10; each row's exact message is what the user
reads after Docker's "Error response from daemon: ".
"""

from __future__ import annotations

import json

import pytest

from policy.engine import decide
from policy.identity import Identity
from policy.limits import resolve
from policy.loader import parse_policy
from policy.mounts import start_problem
from policy.state import ObjectFacts, Request, State

from .conftest import ALICE, ROOT, cli_create_body, create_request

# /home/alice/etc -> /etc; /home/alice/missing does not exist.
_LINKS = {"/home/alice/etc": "/etc", "/home/alice/ln": "/home/alice/proj"}
_MISSING = ("/home/alice/missing",)


def _realpath(path: str) -> str:
    for link, real in _LINKS.items():
        if path == link or path.startswith(link + "/"):
            return real + path[len(link) :]
    return path


def _exists(path: str) -> bool:
    return not path.startswith(_MISSING)


HOST = State(cgroup_driver="cgroupfs", realpath=_realpath, exists=_exists)
ALICE_IN_GROUP = Identity(
    uid=1001,
    user="alice",
    groups=frozenset({"alice", "video"}),
    home="/home/alice",
    gid=1001,
    gids=(44, 1001),
)


def _create(limits_of, identity=ALICE, user="", state=HOST, **host):
    body = cli_create_body(**host)
    body["User"] = user
    return decide(create_request(body), identity, limits_of(identity), state)


# ---- run_as: user -------------------------------------------------------------------------

_ROOT_FIX = (
    "To fix: drop -u/--user (your containers run as you, so files you write stay yours); to "
    "install software, put it in a Dockerfile and docker build (root inside a build is fine)"
)
RUN_AS_ROWS = [
    # (requested User, the User dockerd receives, or the exact refusal)
    ("", "1001:1001"),
    ("alice", "1001:1001"),
    ("1001", "1001:1001"),
    ("1001:1001", "1001:1001"),
    ("alice:alice", "1001:1001"),
    ("vscode", "1001:1001"),  # a name inside the image may map to any uid: it means the caller
    ("node:node", "1001:1001"),
    (
        "root",
        "ds01: docker run -u root is not allowed: containers of group students run as you "
        f"(uid 1001), never as root or another user. {_ROOT_FIX}",
    ),
    (
        "0",
        "ds01: docker run -u 0 is not allowed: containers of group students run as you "
        f"(uid 1001), never as root or another user. {_ROOT_FIX}",
    ),
    (
        "0:0",
        "ds01: docker run -u 0:0 is not allowed: containers of group students run as you "
        f"(uid 1001), never as root or another user. {_ROOT_FIX}",
    ),
    (
        "1002",
        "ds01: docker run -u 1002 is not allowed: containers of group students run as you "
        f"(uid 1001), never as root or another user. {_ROOT_FIX}",
    ),
    (
        "alice:0",
        "ds01: docker run -u alice:0 is not allowed: containers of group students run as you "
        f"(uid 1001), never as root or another user. {_ROOT_FIX}",
    ),
    (
        "vscode:root",
        "ds01: docker run -u vscode:root is not allowed: containers of group students run as "
        f"you (uid 1001), never as root or another user. {_ROOT_FIX}",
    ),
]


@pytest.mark.parametrize(
    "requested,outcome", RUN_AS_ROWS, ids=[r[0] or "empty" for r in RUN_AS_ROWS]
)
def test_create_runs_as_the_caller(requested, outcome, limits_of):
    """A student's container runs as their uid:gid whatever -u says, or is refused."""
    decision = _create(limits_of, user=requested)
    if outcome.startswith("ds01:"):
        assert not decision.allowed
        assert decision.message == outcome
    else:
        assert decision.allowed, decision.message
        assert decision.body["User"] == outcome
        assert decision.body["HostConfig"]["SecurityOpt"] == ["no-new-privileges"]


def test_create_adds_the_callers_groups_and_refuses_others(limits_of):
    """GroupAdd is the caller's supplementary gids; a group they are not in is refused."""
    decision = _create(limits_of, identity=ALICE_IN_GROUP)
    assert decision.body["HostConfig"]["GroupAdd"] == ["44"]
    assert _create(limits_of, identity=ALICE_IN_GROUP, GroupAdd=["video"]).allowed
    refused = _create(limits_of, identity=ALICE_IN_GROUP, GroupAdd=["0"])
    assert refused.message == (
        "ds01: --group-add 0 is not allowed: it is not one of your groups. To fix: drop "
        "--group-add; your containers already have all your groups"
    )
    assert not _create(limits_of, identity=ALICE_IN_GROUP, GroupAdd=["docker"]).allowed


def test_no_new_privileges_cannot_be_turned_off(limits_of):
    """Every spelling of no-new-privileges ends as the one that turns it on."""
    lab = parse_policy(
        "defaults:\n  allow: [security_opt]\ngroups:\n  students:\n    members: [alice]\n", "p"
    )
    body = cli_create_body(SecurityOpt=["no-new-privileges:false", "label=disable"])
    decision = decide(create_request(body), ALICE, resolve(lab, ALICE), HOST)
    assert decision.body["HostConfig"]["SecurityOpt"] == ["label=disable", "no-new-privileges"]


def test_admins_keep_root(limits_of):
    """An admin's -u root and binds anywhere stay as asked (audited elsewhere)."""
    decision = _create(limits_of, identity=ROOT, user="root", Binds=["/etc:/h"])
    assert decision.allowed and decision.body["User"] == "root"


RUN_AS_ROOT = parse_policy(
    "defaults:\n  bind_mounts: ['{home}']\ngroups:\n  builders:\n    members: [alice]\n"
    "    run_as: root\n",
    "p",
)


def test_run_as_root_keeps_root_but_mounts_no_host_folder():
    """run_as: root lets the image's user stand, and then refuses every host bind mount."""
    limits = resolve(RUN_AS_ROOT, ALICE)
    body = cli_create_body()
    body["User"] = "root"
    decision = decide(create_request(body), ALICE, limits, HOST)
    assert decision.allowed and decision.body["User"] == "root"
    for host in (
        {"Binds": ["/home/alice/proj:/w"]},
        {"Mounts": [{"Type": "bind", "Source": "/home/alice/proj", "Target": "/w"}]},
    ):
        refused = decide(create_request(cli_create_body(**host)), ALICE, limits, HOST)
        assert refused.message == (
            "ds01: containers of group builders run as root (run_as: root), so they may not "
            "mount host folders: root in the container would be root on those files. To fix: "
            "use a named volume (-v NAME:/path), or ask an admin for run_as: user"
        )
    volume = cli_create_body(Binds=["cache:/cache"])
    assert decide(create_request(volume), ALICE, limits, HOST).allowed


def test_run_as_combines_most_generous_across_groups():
    """A user in a run_as: root group and a plain group gets root (most generous wins)."""
    lab = parse_policy(
        "groups:\n  a:\n    members: [alice]\n  b:\n    members: [alice]\n    run_as: root\n", "p"
    )
    assert resolve(lab, ALICE).run_as == "root"
    assert resolve(parse_policy("groups: {}\n", "p"), ALICE).run_as == "user"


# ---- exec ---------------------------------------------------------------------------------


def _exec(limits_of, user, identity=ALICE):
    owned = ObjectFacts(kind="container", id="c" * 64, owner=identity.user)
    body = {"User": user, "Cmd": ["sh"], "AttachStdout": True}
    request = Request(
        "POST", "/v1.41/containers/c1/exec", {"Content-Type": "application/json"},
        json.dumps(body).encode(),
    )  # fmt: skip
    return decide(request, identity, limits_of(identity), State(target=owned))


@pytest.mark.parametrize(
    "requested,outcome", RUN_AS_ROWS, ids=[r[0] or "empty" for r in RUN_AS_ROWS]
)
def test_exec_runs_as_the_caller(requested, outcome, limits_of):
    """docker exec -u follows the create rule: the caller's uid:gid, never root."""
    decision = _exec(limits_of, requested)
    if outcome.startswith("ds01:"):
        assert decision.message == outcome.replace("docker run", "docker exec")
    else:
        assert decision.allowed and decision.body["User"] == outcome


# ---- bind mounts --------------------------------------------------------------------------

BIND_ROWS = [
    (
        "missing_source",
        {"Binds": ["/home/alice/missing:/w"]},
        "ds01: bind source /home/alice/missing does not exist (dockerd would create it as root). "
        "To fix: create it first: mkdir -p /home/alice/missing",
    ),
    (
        "missing_mount_source",
        {"Mounts": [{"Type": "bind", "Source": "/home/alice/missing/x", "Target": "/w"}]},
        "ds01: bind source /home/alice/missing/x does not exist (dockerd would create it as "
        "root). To fix: create it first: mkdir -p /home/alice/missing/x",
    ),
    (
        "create_mountpoint",
        {
            "Mounts": [
                {
                    "Type": "bind",
                    "Source": "/home/alice/proj",
                    "Target": "/w",
                    "BindOptions": {"CreateMountpoint": True},
                }
            ]
        },
        "ds01: bind-create-src would let dockerd create the host folder as root. To fix: "
        "create it first: mkdir -p /home/alice/proj",
    ),
    (
        "symlink_out",
        {"Binds": ["/home/alice/etc:/w"]},
        "ds01: bind mount of /home/alice/etc (resolves to /etc) is outside the paths you may "
        "mount (/home/alice, /data/shared). To fix: mount a folder under your home directory "
        "instead",
    ),
    (
        "relabel_z",
        {"Binds": ["/home/alice/proj:/w:z"]},
        "ds01: the bind option :z relabels host files, which is not allowed. To fix: drop :z",
    ),
    (
        "relabel_Z",
        {"Binds": ["/home/alice/proj:/w:ro,Z"]},
        "ds01: the bind option :Z relabels host files, which is not allowed. To fix: drop :Z",
    ),
    (
        "restart_always_with_bind",
        {"Binds": ["/home/alice/proj:/w"], "RestartPolicy": {"Name": "always"}},
        "ds01: --restart always is not allowed on containers that mount host folders: dockerd "
        "would restart it without DS01 re-checking those folders. To fix: drop --restart, or "
        "use a named volume instead of the host folder",
    ),
]


@pytest.mark.parametrize("row", BIND_ROWS, ids=[r[0] for r in BIND_ROWS])
def test_bind_rule_refuses_with_its_reason(row, limits_of):
    """Each way a bind source could leave root-owned or unchecked paths is refused."""
    _, host, message = row
    decision = _create(limits_of, **host)
    assert not decision.allowed
    assert decision.message == message


def test_bind_sources_are_pinned_to_their_resolved_path(limits_of):
    """What dockerd mounts is the resolved path that was checked, in Binds and Mounts."""
    decision = _create(
        limits_of,
        Binds=["/home/alice/ln/sub:/w:ro", "/home/alice/./proj/:/p", "named:/v"],
        Mounts=[{"Type": "bind", "Source": "/home/alice/ln", "Target": "/m"}],
    )
    host = decision.body["HostConfig"]
    assert host["Binds"] == ["/home/alice/proj/sub:/w:ro", "/home/alice/proj:/p", "named:/v"]
    assert host["Mounts"][0]["Source"] == "/home/alice/proj"


def _swapped(table: dict[str, str]) -> State:
    def realpath(path: str) -> str:
        for link, real in table.items():
            if path == link or path.startswith(link + "/"):
                return real + path[len(link) :]
        return path

    return State(realpath=realpath, exists=_exists)


START_ROWS = [
    ("unchanged", {}, None),
    (
        "swapped_for_etc",
        {"/home/alice/proj": "/etc"},
        "bind source /home/alice/proj now resolves to /etc: something on its path was replaced "
        "by a symlink since the container was created",
    ),
    (
        "parent_swapped_inside_home",
        {"/home/alice": "/home/alice2"},
        "bind source /home/alice/proj now resolves to /home/alice2/proj: something on its path "
        "was replaced by a symlink since the container was created",
    ),
]


@pytest.mark.parametrize("row", START_ROWS, ids=[r[0] for r in START_ROWS])
def test_start_rechecks_every_bind_source(row, limits_of):
    """At every start a bind source must still resolve to itself."""
    _, table, problem = row
    host = {"HostConfig": {"Binds": ["/home/alice/proj:/w"], "Mounts": None}}
    assert start_problem(host, ALICE, limits_of(ALICE), _swapped(table)) == problem


def test_start_refuses_a_source_gone_or_out_of_policy(limits_of):
    """A removed source, or one the policy no longer allows, stops the start."""
    gone = {"HostConfig": {"Binds": ["/home/alice/missing:/w"]}}
    assert start_problem(gone, ALICE, limits_of(ALICE), HOST) == (
        "bind source /home/alice/missing no longer exists"
    )
    foreign = {"Mounts": [{"Type": "bind", "Source": "/srv/other", "Destination": "/w"}]}
    assert "outside the paths you may mount" in start_problem(
        foreign, ALICE, limits_of(ALICE), HOST
    )


# ---- docker cp ----------------------------------------------------------------------------


def _archive(method: str, host_config: dict, identity=ALICE, limits_of=None):
    owned = ObjectFacts(
        kind="container",
        id="c" * 64,
        owner="alice",
        details={"HostConfig": host_config},
    )
    request = Request(method, "/v1.41/containers/c1/archive?path=/h", {}, None)
    return decide(request, identity, limits_of(identity), State(target=owned))


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT"])
def test_docker_cp_is_refused_on_containers_with_host_folders(method, limits_of):
    """dockerd copies as root: no docker cp in or out where a host folder is mounted."""
    binds = {"Binds": ["/home/alice:/h"]}
    decision = _archive(method, binds, limits_of=limits_of)
    assert decision.message == (
        "ds01: docker cp is not allowed on containers that mount host folders: dockerd copies "
        "as root and would read or write your folders with root's rights. To fix: copy through "
        "the mounted folder on the host instead (e.g. cp FILE ~/project/)"
    )
    mounts = {"Mounts": [{"Type": "bind", "Source": "/home/alice", "Target": "/h"}]}
    assert not _archive(method, mounts, limits_of=limits_of).allowed
    assert _archive(method, {"Binds": ["vol:/v"]}, limits_of=limits_of).allowed
    assert _archive(method, binds, identity=ROOT, limits_of=limits_of).allowed


# ---- published ports ----------------------------------------------------------------------


def _ports(limits_of, bindings, identity=ALICE, **host):
    return _create(limits_of, identity=identity, PortBindings=bindings, **host)


PORT_ROWS = [
    (
        "privileged_port",
        {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "1023"}]},
        "ds01: publishing host port 1023 is not allowed: ports below 1024 are for system "
        "services. To fix: publish on a port from 1024 up, e.g. -p 127.0.0.1:8080:80",
    ),
    (
        "privileged_range",
        {"80/tcp": [{"HostIp": "", "HostPort": "1000-1100"}]},
        "ds01: publishing host port 1000-1100 is not allowed: ports below 1024 are for system "
        "services. To fix: publish on a port from 1024 up, e.g. -p 127.0.0.1:8080:80",
    ),
    (
        "range_from_zero",  # a lone 0 is "any free port"; a range from 0 starts at 0
        {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "0-1023"}]},
        "ds01: publishing host port 0-1023 is not allowed: ports below 1024 are for system "
        "services. To fix: publish on a port from 1024 up, e.g. -p 127.0.0.1:8080:80",
    ),
    (
        "range_from_double_zero",
        {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "00-80"}]},
        "ds01: publishing host port 00-80 is not allowed: ports below 1024 are for system "
        "services. To fix: publish on a port from 1024 up, e.g. -p 127.0.0.1:8080:80",
    ),
    (
        "public_address",
        {"8888/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8888"}]},
        "ds01: publishing on host address 0.0.0.0 is not allowed for group students (only "
        "loopback). To fix: publish on 127.0.0.1 (-p 127.0.0.1:8888:8888) and connect with "
        "ssh -L",
    ),
    (
        "public_v6",
        {"8888/tcp": [{"HostIp": "::", "HostPort": ""}]},
        "ds01: publishing on host address :: is not allowed for group students (only "
        "loopback). To fix: publish on 127.0.0.1 (-p 127.0.0.1:PORT:8888) and connect with "
        "ssh -L",
    ),
]


@pytest.mark.parametrize("row", PORT_ROWS, ids=[r[0] for r in PORT_ROWS])
def test_publishing_refuses_what_the_user_could_not_bind(row, limits_of):
    """Ports below 1024 and non-loopback addresses need the policy's grant."""
    _, bindings, message = row
    assert _ports(limits_of, bindings).message == message


def test_publish_all_is_refused_and_unspecified_address_becomes_loopback(limits_of):
    """-P would open every interface; -p 8080:80 is pinned to 127.0.0.1."""
    assert _ports(limits_of, {}, PublishAllPorts=True).message == (
        "ds01: -P/--publish-all publishes on every host interface, which is not allowed for "
        "group students. To fix: publish each port on loopback instead: -p 127.0.0.1::PORT "
        "(then ssh -L)"
    )
    decision = _ports(limits_of, {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]})
    assert decision.body["HostConfig"]["PortBindings"]["80/tcp"][0]["HostIp"] == "127.0.0.1"
    loop6 = _ports(limits_of, {"80/tcp": [{"HostIp": "::1", "HostPort": "8080"}]})
    assert loop6.allowed


def test_port_grants_open_each_their_own_door():
    """low_ports allows <1024 on loopback only; public_ports allows any address, >=1024 only."""
    lab = parse_policy(
        "groups:\n  web:\n    members: [alice]\n    allow: [low_ports]\n"
        "  pub:\n    members: [bob]\n    allow: [public_ports]\n",
        "p",
    )
    bob = Identity(uid=1002, user="bob", home="/home/bob", gid=1002, gids=(1002,))
    body = cli_create_body(PortBindings={"80/tcp": [{"HostIp": "", "HostPort": "80"}]})
    web = decide(create_request(body), ALICE, resolve(lab, ALICE), HOST)
    assert web.allowed
    assert web.body["HostConfig"]["PortBindings"]["80/tcp"][0]["HostIp"] == "127.0.0.1"
    body = cli_create_body(PortBindings={"80/tcp": [{"HostIp": "", "HostPort": "80"}]})
    assert not decide(create_request(body), bob, resolve(lab, bob), HOST).allowed
    body = cli_create_body(PortBindings={"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]})
    public = decide(create_request(body), bob, resolve(lab, bob), HOST)
    assert public.allowed
    assert public.body["HostConfig"]["PortBindings"]["80/tcp"][0]["HostIp"] == "0.0.0.0"


# ---- scheduler fields ---------------------------------------------------------------------

SCHEDULER_ROWS = [
    (
        "cpu_quota_unlimited",
        {"CpuQuota": -1},
        "ds01: --cpu-quota -1 is not allowed: negative values mean unlimited or nothing. To "
        "fix: drop --cpu-quota, or give a positive value within your limits (ds01 limits)",
    ),
    (
        "cpu_period_negative",
        {"CpuPeriod": -5},
        "ds01: --cpu-period -5 is not allowed: negative values mean unlimited or nothing. To "
        "fix: drop --cpu-period, or give a positive value within your limits (ds01 limits)",
    ),
    (
        "cpu_shares_negative",
        {"CpuShares": -2},
        "ds01: --cpu-shares -2 is not allowed: negative values mean unlimited or nothing. To "
        "fix: drop --cpu-shares, or give a positive value within your limits (ds01 limits)",
    ),
    (
        "blkio_negative",
        {"BlkioWeight": -1},
        "ds01: --blkio-weight -1 is not allowed: negative values mean unlimited or nothing. To "
        "fix: drop --blkio-weight, or give a positive value within your limits (ds01 limits)",
    ),
    (
        "nano_negative",
        {"NanoCpus": -1},
        "ds01: --cpus -1 is not allowed: negative values mean unlimited or nothing. To fix: "
        "drop --cpus, or give a positive value within your limits (ds01 limits)",
    ),
    (
        "quota_over_cap",
        {"CpuQuota": 2_000_000, "CpuPeriod": 100_000},
        "ds01: --cpus 20 is over the per-container limit of 4 CPUs for group students. To "
        "fix: ask for at most --cpus 4",
    ),
    (
        "quota_with_nano",
        {"CpuQuota": 100_000, "NanoCpus": 1_000_000_000},
        "ds01: --cpus cannot be combined with --cpu-quota or --cpu-period. To fix: use --cpus "
        "alone",
    ),
    (
        "period_alone",
        {"CpuPeriod": 50_000},
        "ds01: --cpu-period without --cpu-quota leaves the CPU time unlimited. To fix: use "
        "--cpus alone",
    ),
    (
        "period_out_of_range",
        {"CpuQuota": 10, "CpuPeriod": 10},
        "ds01: --cpu-period 10 is out of range. To fix: use 1000 to 1000000 microseconds, or "
        "just --cpus",
    ),
    (
        "realtime",
        {"CpuRealtimeRuntime": 950000},
        "ds01: --cpu-rt-runtime is not allowed for group students. To fix: drop --cpu-rt-runtime",
    ),
    (
        "kernel_memory",
        {"KernelMemory": 1 << 30},
        "ds01: --kernel-memory is not allowed for group students. To fix: drop --kernel-memory",
    ),
    (
        "reservation_over_cap",
        {"MemoryReservation": 64 << 30},
        "ds01: --memory-reservation is over your per-container memory limit. To fix: keep it "
        "at or below 16g",
    ),
    (
        "ulimit_rtprio",
        {"Ulimits": [{"Name": "rtprio", "Soft": 99, "Hard": 99}]},
        "ds01: --ulimit rtprio is not allowed for group students: real-time scheduling is not "
        "bounded by the CPU limits and could starve other users. To fix: drop --ulimit rtprio",
    ),
    (
        "ulimit_rttime_case",
        {"Ulimits": [{"Name": "RTTIME", "Soft": -1, "Hard": -1}]},
        "ds01: --ulimit rttime is not allowed for group students: real-time scheduling is not "
        "bounded by the CPU limits and could starve other users. To fix: drop --ulimit rttime",
    ),
    (
        "ulimit_not_an_object",
        {"Ulimits": ["rtprio=99"]},
        "ds01: an --ulimit entry is not {Name, Soft, Hard}",
    ),
    (
        "blkio_out_of_range",
        {"BlkioWeight": 5},
        "ds01: --blkio-weight 5 is out of range. To fix: use 10 to 1000",
    ),
]


@pytest.mark.parametrize("row", SCHEDULER_ROWS, ids=[r[0] for r in SCHEDULER_ROWS])
def test_scheduler_field_cannot_lift_the_cpu_cap(row, limits_of):
    """No negative, unlimited or real-time value sneaks past the caps DS01 sets."""
    _, host, message = row
    assert _create(limits_of, **host).message == message


def test_quota_within_the_cap_is_kept_without_nanocpus(limits_of):
    """--cpu-quota 200000 --cpu-period 100000 is 2 CPUs: allowed, and NanoCpus stays 0."""
    decision = _create(limits_of, CpuQuota=200_000, CpuPeriod=100_000)
    assert decision.allowed
    assert decision.body["HostConfig"]["NanoCpus"] == 0


def _update(limits_of, body: dict, target_host: dict | None = None, labels: dict | None = None):
    target = ObjectFacts(
        kind="container",
        id="c" * 64,
        owner="alice",
        labels=labels or {},
        details={"HostConfig": target_host or {}},
    )
    request = Request(
        "POST",
        "/v1.41/containers/c1/update",
        {"Content-Type": "application/json"},
        json.dumps(body).encode(),
    )
    return decide(request, ALICE, limits_of(ALICE), State(target=target))


def test_update_follows_the_scheduler_rules(limits_of):
    """docker update cannot do what create refuses: negative quota, rt runtime, restart+binds."""
    assert not _update(limits_of, {"CpuQuota": -1}).allowed
    assert not _update(limits_of, {"CpuRealtimeRuntime": 1000}).allowed
    assert not _update(limits_of, {"CpuPeriod": 100_000}).allowed
    assert _update(limits_of, {"CpuShares": 512}).allowed
    restart = _update(
        limits_of, {"RestartPolicy": {"Name": "always"}}, {"Binds": ["/home/alice/p:/w"]}
    )
    assert restart.message == (
        "ds01: restart policies are not allowed on containers that mount host folders: dockerd "
        "would restart them without DS01 re-checking those folders. To fix: keep --restart no"
    )


# ---- labels DS01 writes -------------------------------------------------------------------


def test_every_ds01_label_is_written_so_image_labels_cannot_show_through(limits_of):
    """Absent ds01.* values are written empty: an image's LABEL ds01.devices is overridden."""
    labels = _create(limits_of).body["Labels"]
    assert labels["ds01.devices"] == "" and labels["ds01.gpueq"] == ""
    assert labels["ds01.allocated_at"] == "" and labels["ds01.wait"] == ""
    assert labels["ds01.user"] == "alice" and labels["ds01.uid"] == "1001"


# ---- binds inherited through --volumes-from ------------------------------------------------

INHERITS = {
    "HostConfig": {"Binds": None, "VolumesFrom": ["a" * 64]},
    "Mounts": [{"Type": "bind", "Source": "/home/alice/x", "Destination": "/w"}],
}


def test_start_rechecks_binds_inherited_through_volumes_from(limits_of):
    """A container given ~/x by --volumes-from is re-checked at start like its source."""
    state = _swapped({"/home/alice/x": "/etc"})
    assert start_problem(INHERITS, ALICE, limits_of(ALICE), state) == (
        "bind source /home/alice/x now resolves to /etc: something on its path was replaced by "
        "a symlink since the container was created"
    )


@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_docker_cp_is_refused_on_inherited_host_folders(method, limits_of):
    """docker cp into a container that inherits a host folder writes as root there: refused."""
    owned = ObjectFacts(kind="container", id="c" * 64, owner="alice", details=INHERITS)
    request = Request(method, "/v1.41/containers/c1/archive?path=/w", {}, None)
    decision = decide(request, ALICE, limits_of(ALICE), State(target=owned))
    assert decision.code == "archive_binds"


def _with_source(name: str = "first") -> dict[str, ObjectFacts]:
    source = ObjectFacts(
        kind="container",
        id="a" * 64,
        owner="alice",
        name=name,
        details={
            "HostConfig": {"Binds": ["/home/alice/x:/w"]},
            "Mounts": [{"Type": "bind", "Source": "/home/alice/x", "Destination": "/w"}],
        },
    )
    return {f"container:{name}": source}


def test_inherited_bind_counts_as_a_host_folder_at_create(limits_of):
    """--volumes-from a container with a host folder: no restart policy, no run_as: root."""
    body = cli_create_body(VolumesFrom=["first"], RestartPolicy={"Name": "always"})
    state = State(related=_with_source(), realpath=_realpath, exists=_exists)
    refused = decide(create_request(body), ALICE, limits_of(ALICE), state)
    assert refused.code == "restart_with_binds"
    root = decide(create_request(cli_create_body(VolumesFrom=["first"])), ALICE,
                  resolve(RUN_AS_ROOT, ALICE), state)  # fmt: skip
    assert root.code == "run_as_root_binds"
    plain = decide(create_request(cli_create_body(VolumesFrom=["first"])), ALICE,
                   limits_of(ALICE), state)  # fmt: skip
    assert plain.allowed and plain.body["HostConfig"]["VolumesFrom"] == ["a" * 64]


def test_ordinary_ulimits_pass(limits_of):
    """nofile and friends stay as asked: they cannot lift the container past its cgroup."""
    ulimits = [{"Name": "nofile", "Soft": 65536, "Hard": 65536}, {"Name": "rtprio", "Soft": 0}]
    assert _create(limits_of, Ulimits=ulimits).allowed
