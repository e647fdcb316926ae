"""Who a gateway caller is: only the kernel's SO_PEERCRED uid decides, never the caller's cgroup.

Each row is a peer (uid, and the cgroup its pid claims to be in) and what the gateway makes of
it. The cgroup text is served as the pid's ``/proc/<pid>/cgroup`` and dockerd answers every
lookup with a victim's container, so an implementation that trusted either would show here.
"""

from __future__ import annotations

import builtins
import io
import json
from typing import Any

import pytest

from authz_plugin.authz import AuthzRequest, parse_authz, settled
from ds01d.gateway_handler import GatewayHandler
from ds01d.identities import identity_for_tls_user, identity_for_uid
from ds01d.policy_store import PolicyStore
from ds01d.service import Service
from gateway.types import Client, Forward, PeerCred, Reply, RequestHead
from policy.identity import Channel

POLICY = """
unknown_users: deny
groups:
  students:
    members: [nobody]
  admins:
    admin: true
    members: [root]
"""

VICTIM_ID = "5f" * 32  # a container of uid 1 ("daemon"), visible in /proc/*/cgroup
MADE_UP = ("a1" * 32, "b2" * 32)
UNKNOWN_UID = 2**31 - 5
PID = 4_000_000  # above pid_max: no real process, so only the served file can be read
# Any read that needs no lookup (a ping is answered by the gateway itself, ds01d/ping.py).
READ = RequestHead("GET", "/v1.41/version", (("Host", "docker"),))


class VictimDocker:
    """A dockerd that answers every container lookup with the victim's container."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.lookups: list[str] = []

    async def inspect_container(self, ref: str) -> dict[str, Any]:
        self.lookups.append(ref)
        labels = {"ds01.user": "daemon", "ds01.uid": "1"}
        return {"Id": VICTIM_ID, "Config": {"Labels": labels}}


@pytest.fixture
def peer_cgroup(monkeypatch):
    """Serve ``/proc/PID/cgroup`` with the text a row gives (everything else is real)."""
    served: dict[str, str] = {}
    real_open = builtins.open

    def fake_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file) in served:
            return io.StringIO(served[str(file)])
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)

    def serve(path: str) -> None:
        served[f"/proc/{PID}/cgroup"] = f"12:pids:{path}\n0::{path}\n"

    return serve


@pytest.fixture
def gateway(tmp_path) -> tuple[GatewayHandler, VictimDocker]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    docker = VictimDocker()
    return GatewayHandler(Service(PolicyStore(str(policy)), docker)), docker  # type: ignore[arg-type]


# (row id, peer uid, cgroup path of its pid, user it is, or the exact refusal)
PEERS = [
    ("host_user", 65534, "/user.slice/user-65534.slice/session-3.scope", "nobody"),
    ("cgroup_named_victim_docker", 65534, f"/docker/{VICTIM_ID}", "nobody"),
    (
        "user_scope_named_victim",
        65534,
        f"/user.slice/user-65534.slice/user@65534.service/docker-{VICTIM_ID}.scope",
        "nobody",
    ),
    ("made_up_hex_1", 65534, f"/docker-{MADE_UP[0]}.scope", "nobody"),
    ("made_up_hex_2", 65534, f"/system.slice/docker-{MADE_UP[1]}.scope", "nobody"),
    ("root_in_victim_cgroup", 0, f"/docker/{VICTIM_ID}", "root"),
    ("root_on_host", 0, "/", "root"),
    (
        "unknown_uid",
        UNKNOWN_UID,
        "/",
        f"ds01: uid:{UNKNOWN_UID} is not in the DS01 policy. "
        "To fix: ask an admin to add you to a group in /etc/ds01/policy.yaml",
    ),
    (
        "unknown_uid_in_victim_cgroup",
        UNKNOWN_UID,
        f"/docker/{VICTIM_ID}",
        f"ds01: uid:{UNKNOWN_UID} is not in the DS01 policy. "
        "To fix: ask an admin to add you to a group in /etc/ds01/policy.yaml",
    ),
]


@pytest.mark.parametrize(
    ("uid", "cgroup", "expected"), [r[1:] for r in PEERS], ids=[r[0] for r in PEERS]
)
async def test_a_peer_is_the_user_of_its_uid(gateway, peer_cgroup, uid, cgroup, expected):
    handler, docker = gateway
    peer_cgroup(cgroup)
    client = Client(PeerCred(PID, uid, uid))
    answer = await handler.decide(client, READ, None)
    assert client.context.uid == uid
    assert client.context.channel is Channel.GATEWAY
    assert docker.lookups == []  # nothing about the caller is asked of dockerd
    if expected.startswith("ds01: "):
        assert isinstance(answer, Reply) and answer.status == 403
        assert json.loads(answer.body)["message"] == expected
    else:
        assert isinstance(answer, Forward)
        assert client.context.user == expected


async def test_made_up_cgroup_names_are_one_identity(gateway, peer_cgroup):
    """Fresh container-looking names do not mint fresh identities (and fresh quotas)."""
    handler, _ = gateway
    seen = []
    for name in MADE_UP:
        peer_cgroup(f"/docker-{name}.scope")
        client = Client(PeerCred(PID, 65534, 65534))
        await handler.decide(client, READ, None)
        seen.append(client.context)
    assert seen[0] == seen[1] == identity_for_uid(65534)


def test_tls_user_is_the_named_unix_user() -> None:
    identity = identity_for_tls_user("nobody")
    assert identity is not None
    assert (identity.uid, identity.user, identity.channel) == (65534, "nobody", Channel.TLS)
    assert not identity.is_direct and identity.is_tls


@pytest.mark.parametrize("name", ["no-such-user-ds01", "", "nobody\x00root", "65534"])
def test_tls_name_that_is_no_user_has_no_identity(name: str) -> None:
    assert identity_for_tls_user(name) is None


# ----------------------------------------------------------------------------- TLS users

TLS_FIX = "To fix: use the DS01 gateway socket (unix:///var/run/docker.sock) on the server"


def _tls_refusal(what: str) -> str:
    return (
        f"ds01: {what} must be adjusted by DS01 for your account, which a TLS connection "
        f"to dockerd does not allow. {TLS_FIX}"
    )


MINE_ID, THEIRS_ID = "a1" * 32, "b2" * 32


class LabelledDocker:
    """dockerd with two containers: ``mine`` (nobody's) and ``theirs`` (daemon's)."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}

    async def inspect_container(self, ref: str) -> dict[str, Any] | None:
        name = {MINE_ID: "mine", THEIRS_ID: "theirs"}.get(ref, ref)
        owner = {"mine": "nobody", "theirs": "daemon"}.get(name)
        if owner is None:
            return None
        full = MINE_ID if name == "mine" else THEIRS_ID
        return {
            "Id": full,
            "Name": f"/{name}",
            "Config": {"Labels": {"ds01.user": owner}},
            "HostConfig": {"CgroupParent": f"/ds01/{owner}"},  # as DS01 created it
        }

    async def inspect_volume(self, ref: str) -> None:
        return None

    async def list_containers(self, filters: Any = None) -> list[Any]:
        return []

    async def inspect_image(self, ref: str) -> None:  # no image: the rule decides on the name
        return None


CREATE = json.dumps({"Image": "busybox", "HostConfig": {}}).encode()
PRIVILEGED = json.dumps({"Image": "busybox", "HostConfig": {"Privileged": True}}).encode()

# (row id, certificate CN, method, path, body, allowed, exact message)
TLS_ROWS = [
    ("ping", "nobody", "GET", "/_ping", None, True, ""),
    ("own_stop", "nobody", "POST", f"/containers/{MINE_ID}/stop", None, True, ""),
    ("own_inspect", "nobody", "GET", f"/containers/{MINE_ID}/json", None, True, ""),
    # By name or ID prefix dockerd would resolve the reference again after the check (a
    # rename loop could point it elsewhere): only the gateway can forward the full ID.
    (
        "own_stop_by_name",
        "nobody",
        "POST",
        "/containers/mine/stop",
        None,
        False,
        _tls_refusal("POST /containers/{id}/stop"),
    ),
    (
        "own_inspect_by_name",
        "nobody",
        "GET",
        "/containers/mine/json",
        None,
        False,
        _tls_refusal("GET /containers/{id}/json"),
    ),
    (
        "other_stop",
        "nobody",
        "POST",
        "/containers/theirs/stop",
        None,
        False,
        "No such container: theirs",
    ),
    (
        "other_inspect",
        "nobody",
        "GET",
        "/containers/theirs/json",
        None,
        False,
        "No such container: theirs",
    ),
    (
        "ps_needs_owner_filter",
        "nobody",
        "GET",
        "/containers/json",
        None,
        False,
        _tls_refusal("GET /containers/json"),
    ),
    (
        "create_needs_rewrite",
        "nobody",
        "POST",
        "/containers/create",
        CREATE,
        False,
        _tls_refusal("POST /containers/create"),
    ),
    (
        "create_privileged_policy_first",
        "nobody",
        "POST",
        "/containers/create",
        PRIVILEGED,
        False,
        "ds01: --privileged is not allowed for group students. To fix: run without --privileged",
    ),
    (
        "volume_create_needs_labels",
        "nobody",
        "POST",
        "/volumes/create",
        b'{"Name":"v"}',
        False,
        _tls_refusal("POST /volumes/create"),
    ),
    ("admin_ps_unfiltered", "root", "GET", "/containers/json", None, True, ""),
    (
        "unknown_name",
        "no-such-user-ds01",
        "GET",
        "/_ping",
        None,
        False,
        "ds01: the TLS client certificate names 'no-such-user-ds01', who is no user of this host. "
        "To fix: ask an admin for a certificate whose CN is your user name",
    ),
    ("root_on_unix_socket", "", "POST", "/containers/create", PRIVILEGED, True, ""),
]


@pytest.mark.parametrize(
    ("cn", "method", "path", "body", "allowed", "message"),
    [r[1:] for r in TLS_ROWS],
    ids=[r[0] for r in TLS_ROWS],
)
async def test_tls_user_gets_their_policy_without_rewrites(
    tmp_path, cn, method, path, body, allowed, message
):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    service = Service(PolicyStore(str(policy)), LabelledDocker())  # type: ignore[arg-type]
    headers = {"Content-Type": "application/json"} if body else {}
    request = AuthzRequest(user=cn, method=method, uri=f"/v1.41{path}", headers=headers, body=body)
    answer = await settled(service.authz_request(request))
    assert (answer.allow, answer.msg) == (allowed, message)


async def test_certificate_without_a_cn_is_no_one_not_root(tmp_path):
    """dockerd sends User "" with UserAuthNMethod TLS for a CN-less certificate: refused."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    service = Service(PolicyStore(str(policy)), LabelledDocker())  # type: ignore[arg-type]
    request = AuthzRequest(
        user="",
        authn_method="TLS",
        method="POST",
        uri="/v1.41/containers/create",
        headers={"Content-Type": "application/json"},
        body=PRIVILEGED,
    )
    answer = await settled(service.authz_request(request))
    assert (answer.allow, answer.msg) == (
        False,
        "ds01: the TLS client certificate names no user (its CN is empty). To fix: ask an "
        "admin for a certificate whose CN is your user name",
    )


def test_plugin_request_keeps_the_authentication_method():
    """UserAuthNMethod is read from dockerd's AuthZ JSON."""
    raw = json.dumps(
        {"User": "", "UserAuthNMethod": "TLS", "RequestMethod": "GET", "RequestUri": "/_ping"}
    ).encode()
    assert parse_authz(raw, response=False).authn_method == "TLS"
