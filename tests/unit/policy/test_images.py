"""Image ownership: one row per way to use, write, push or remove an image, each exact."""
# ruff: noqa: E501  (the table holds each exact user-facing message on one line)

from __future__ import annotations

import json
from typing import Any

import pytest

from policy import images
from policy.engine import decide
from policy.images import (
    OWNERS_KEY,
    check_image_use,
    check_route_writes,
    familiar,
    image_facts,
    image_key,
    normalise_tag,
    owners_facts,
    tag_key,
)
from policy.routes import parse_route
from policy.state import ObjectFacts, Request, State

from .conftest import ALICE, BOB, ROOT, container

A, B, C, D, E, F, G = ("sha256:" + c * 64 for c in "abcdef0")
ALICE_MODEL = {"Id": A, "RepoTags": ["alice/model:latest"], "RepoDigests": []}
BASE = {"Id": B, "RepoTags": ["busybox:latest"], "RepoDigests": ["busybox@sha256:" + "c" * 64]}
BOB_TOOL = {"Id": D, "RepoTags": ["bob/tool:1"], "RepoDigests": []}
MIXED = {"Id": E, "RepoTags": ["bob/x:latest", "busybox:1"], "RepoDigests": []}
BOB_DANGLING = {"Id": F, "RepoTags": [], "RepoDigests": []}
ALICE_DANGLING = {"Id": G, "RepoTags": ["<none>:<none>"], "RepoDigests": ["<none>@<none>"]}
ALICE_PUSHED = {
    "Id": C,
    "RepoTags": ["localhost:5000/alice/m:1", "busybox:2"],
    "RepoDigests": ["localhost:5000/alice/m@sha256:" + "9" * 64],
}

TAGS = {
    "docker.io/alice/model:latest": "alice",
    "docker.io/bob/tool:1": "bob",
    "docker.io/bob/x:latest": "bob",
    "localhost:5000/alice/m:1": "alice",
}
IDS = {F: "bob", G: "alice"}
# What dockerd resolves each name to (as the service would look them up).
RESOLVES = {
    "alice/model": ALICE_MODEL,
    "alice/model:latest": ALICE_MODEL,
    "busybox": BASE,
    "busybox:latest": BASE,
    "bob/tool:1": BOB_TOOL,
    "bob/x": MIXED,
    "aaaaaa": ALICE_MODEL,  # ID prefixes
    "bbbbbb": BASE,
    "eeeeee": MIXED,
    "ffffff": BOB_DANGLING,
    "000000": ALICE_DANGLING,
    F: BOB_DANGLING,
}
EXISTING = (
    "docker.io/library/busybox:latest",
    "docker.io/library/busybox:1",
    "docker.io/alice/model:latest",
    "docker.io/bob/tool:1",
)


def image_state(target: ObjectFacts | None = None) -> State:
    related: dict[str, ObjectFacts] = {OWNERS_KEY: owners_facts(TAGS, IDS)}
    for ref, info in RESOLVES.items():
        related[image_key(ref)] = image_facts(info, ref)
    for tag in EXISTING:
        related[tag_key(tag)] = ObjectFacts(kind="image", id="", owner=None)
    return State(target=target, related=related)


TAKEN = "ds01: the image name alice/model:latest belongs to another user. To fix: use a name of your own, e.g. bob/model:latest"
SHARED = "ds01: the image name busybox:latest is a shared image; only an admin can replace it. To fix: use a name of your own, e.g. bob/busybox:latest"
OK = None

# (row id, user, method, target, expected status, exact message); OK: allowed.
ROWS: list[tuple[str, Any, str, str, int | None, str | None]] = [
    ("inspect_other", BOB, "GET", "/v1.41/images/alice/model/json", 404, "No such image: alice/model"),
    ("inspect_own", ALICE, "GET", "/v1.41/images/alice/model/json", None, OK),
    ("inspect_shared", BOB, "GET", "/v1.41/images/busybox/json", None, OK),
    ("inspect_other_by_id", BOB, "GET", "/images/aaaaaa/json", 404, "No such image: aaaaaa"),
    ("inspect_shared_by_id", BOB, "GET", "/images/bbbbbb/json", None, OK),
    ("inspect_own_dangling", BOB, "GET", "/images/ffffff/json", None, OK),
    ("inspect_other_dangling", BOB, "GET", "/images/000000/json", 404, "No such image: 000000"),
    ("inspect_missing", BOB, "GET", "/images/nope/json", 404, "No such image: nope"),
    ("history_other", BOB, "GET", "/images/alice/model/history", 404, "No such image: alice/model"),
    ("save_other", BOB, "GET", "/images/alice/model/get", 404, "No such image: alice/model"),
    ("save_many_one_other", BOB, "GET", "/images/get?names=busybox&names=alice/model", 404, "No such image: alice/model"),
    ("save_many_shared", BOB, "GET", "/images/get?names=busybox&names=bob/tool:1", None, OK),
    ("tag_shared_to_own", BOB, "POST", "/images/busybox/tag?repo=bob/bb&tag=1", None, OK),
    ("tag_over_other", BOB, "POST", "/images/busybox/tag?repo=alice/model", 403, TAKEN),
    ("tag_over_other_explicit", BOB, "POST", "/images/busybox/tag?repo=docker.io/alice/model&tag=latest", 403, TAKEN),
    ("tag_over_shared", BOB, "POST", "/images/bob/tool:1/tag?repo=busybox&tag=latest", 403, SHARED),
    ("tag_from_other", BOB, "POST", "/images/alice/model/tag?repo=bob/stolen", 404, "No such image: alice/model"),
    ("tag_own_again", ALICE, "POST", "/images/busybox/tag?repo=alice/model", None, OK),
    ("tag_uppercase", BOB, "POST", "/images/busybox/tag?repo=bob/X", 400, "ds01: 'bob/X' is not a valid image name (lowercase repository[:tag], no digest). To fix: use a name like yourname/model:latest"),
    ("tag_no_target", BOB, "POST", "/images/busybox/tag", 403, "ds01: docker tag needs a target name. To fix: docker tag SOURCE TARGET"),
    ("import_over_other", BOB, "POST", "/images/create?fromSrc=-&repo=alice/model&tag=latest", 403, TAKEN),
    ("import_over_shared", BOB, "POST", "/images/create?fromSrc=-&repo=busybox", 403, SHARED),
    ("import_own", BOB, "POST", "/images/create?fromSrc=-&repo=bob/imp", None, OK),
    ("import_untagged", BOB, "POST", "/images/create?fromSrc=-", None, OK),
    ("pull_shared", BOB, "POST", "/images/create?fromImage=busybox&tag=latest", None, OK),
    ("pull_new", BOB, "POST", "/images/create?fromImage=pytorch/pytorch&tag=2.1", None, OK),
    ("pull_over_other", BOB, "POST", "/images/create?fromImage=alice/model&tag=latest", 403, "ds01: the image name alice/model:latest belongs to another user; a pull may not replace it. To fix: ask an admin to pull it, or pull another tag"),
    ("pull_all_tags_other", BOB, "POST", "/images/create?fromImage=alice/model", 403, "ds01: some tags of alice/model belong to another user; a pull may not replace them. To fix: pull one tag at a time (docker pull NAME:TAG)"),
    ("pull_by_digest", BOB, "POST", "/images/create?fromImage=alice/model&tag=sha256:" + "1" * 64, None, OK),
    ("pull_import_both", BOB, "POST", "/images/create?fromImage=busybox&tag=latest&fromSrc=-&repo=alice/model", None, OK),
    ("load", BOB, "POST", "/images/load", 403, "ds01: docker load is for admins: the image names are inside the tar, so DS01 cannot check them before dockerd writes them. To fix: use docker import (a root filesystem tar) or docker build, or ask an admin to load shared images"),
    ("load_admin", ROOT, "POST", "/images/load", None, OK),
    ("push_own", BOB, "POST", "/images/bob/tool/push?tag=1", None, OK),
    ("push_other", BOB, "POST", "/images/alice/model/push?tag=latest", 404, "No such image: alice/model:latest"),
    ("push_shared", BOB, "POST", "/images/busybox/push?tag=latest", 403, "ds01: the image busybox:latest is a shared image; you can push only images you built or tagged yourself. To fix: tag it under your own name first: docker tag busybox:latest bob/busybox:latest"),
    ("push_all_tags", BOB, "POST", "/images/bob/tool/push", 403, "ds01: push one tag you own at a time (not all tags of a repository, not by digest). To fix: docker push bob/tool:TAG"),
    ("rmi_own", BOB, "DELETE", "/images/bob/tool:1", None, OK),
    ("rmi_other", BOB, "DELETE", "/images/alice/model", 404, "No such image: alice/model"),
    ("rmi_other_by_id", BOB, "DELETE", "/images/aaaaaa?force=1", 404, "No such image: aaaaaa"),
    ("rmi_shared", BOB, "DELETE", "/images/busybox", 403, "ds01: the image busybox is shared (or also tagged by others); only an admin can remove it. To fix: remove only names you made yourself (docker rmi yourname/image:tag)"),
    ("rmi_mixed_by_id", BOB, "DELETE", "/images/eeeeee?force=1", 403, "ds01: the image eeeeee is shared (or also tagged by others); only an admin can remove it. To fix: remove only names you made yourself (docker rmi yourname/image:tag)"),
    ("rmi_own_tag_of_mixed", BOB, "DELETE", "/images/bob/x", None, OK),
    ("rmi_own_dangling", BOB, "DELETE", "/images/" + F, None, OK),
    ("rmi_admin_other", ROOT, "DELETE", "/images/alice/model", None, OK),
    ("search_open", BOB, "GET", "/images/search?term=x", None, OK),
    ("list_open", BOB, "GET", "/images/json", None, OK),
    ("prune_admin_only", BOB, "POST", "/images/prune", 403, "ds01: POST /images/prune is for admins only. To fix: ask an admin of this server"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("user", "method", "target", "status", "message"),
    [row[1:] for row in ROWS],
    ids=[row[0] for row in ROWS],
)
def test_image_rules(limits_of, user, method, target, status, message):
    decision = decide(Request(method, target), user, limits_of(user), image_state())
    if message is None:
        assert decision.allowed, decision.message
    else:
        assert not decision.allowed
        assert decision.message == message
        assert decision.status == status


@pytest.mark.parametrize(
    ("user", "method", "target", "forwarded"),
    [
        (BOB, "GET", "/v1.41/images/bbbbbb/json", f"/v1.41/images/{B}/json"),
        (BOB, "DELETE", "/images/ffffff?force=1", f"/images/{F}?force=1"),
        (BOB, "POST", "/images/bbbbbb/tag?repo=bob/t", f"/images/{B}/tag?repo=bob%2Ft"),
        (ROOT, "GET", "/images/aaaaaa/history", f"/images/{A}/history"),
        (BOB, "GET", "/images/busybox/json", "/images/busybox/json"),  # a tag stays a tag
        (BOB, "DELETE", "/images/bob/x", "/images/bob/x"),
        # docker save of several: each ID prefix pinned, each name kept, the order too
        (
            BOB,
            "GET",
            "/images/get?names=bbbbbb&names=bob%2Ftool%3A1&names=eeeeee",
            f"/images/get?names={B.replace(':', '%3A')}&names=bob%2Ftool%3A1&names={E.replace(':', '%3A')}",
        ),
        (ROOT, "GET", "/images/get?names=aaaaaa", f"/images/get?names={A.replace(':', '%3A')}"),
        (BOB, "GET", "/images/get?names=busybox", "/images/get?names=busybox"),
    ],
)
def test_an_id_prefix_is_forwarded_as_the_full_id(limits_of, user, method, target, forwarded):
    decision = decide(Request(method, target), user, limits_of(user), image_state())
    assert decision.allowed, decision.message
    route = parse_route(method, target)
    assert route.canonical_target(decision.params, decision.query) == forwarded


def test_admin_on_another_users_image_is_audited(limits_of):
    decision = decide(
        Request("DELETE", "/images/alice/model"), ROOT, limits_of(ROOT), image_state()
    )
    assert decision.allowed and decision.audited


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("/commit?container=c1&repo=alice/model", TAKEN),
        ("/commit?container=c1&repo=busybox&tag=latest", SHARED),
        ("/commit?container=c1&repo=bob/snap&tag=1", None),
        ("/commit?container=c1", None),
    ],
)
def test_commit_tags(limits_of, target, message):
    state = image_state(target=container("bob"))
    decision = decide(Request("POST", target), BOB, limits_of(BOB), state)
    assert decision.message == (message or "")
    assert decision.allowed is (message is None)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("t=alice/model", TAKEN),
        ("t=bob/new:1&t=alice/model:latest", TAKEN),
        ("t=busybox", SHARED),
        ("t=bob/new:1&t=bob/tool:1", None),
        ("", None),
    ],
)
def test_build_tags(limits_of, query, message):
    """What the build rules call for ``t`` (policy/builds.py wires it into POST /build)."""
    route = parse_route("POST", f"/build?{query}")
    refusal = check_route_writes(route, BOB, limits_of(BOB), image_state())
    assert (refusal.message if refusal else None) == message


@pytest.mark.parametrize(
    ("ref", "message"),
    [("alice/model", "No such image: alice/model"), ("busybox", None), ("not-here", None)],
)
def test_create_image_use(limits_of, ref, message):
    """On a create, another's image is missing with status 400 (no pull); unknown passes."""
    refusal = check_image_use(ref, BOB, limits_of(BOB), image_state(), create=True)
    assert (refusal.message if refusal else None) == message
    if refusal is not None:
        assert refusal.status == 400


def test_list_shows_own_shared_and_own_dangling():
    answer = json.dumps(
        [ALICE_MODEL, BASE, BOB_TOOL, MIXED, BOB_DANGLING, ALICE_DANGLING, ALICE_PUSHED]
    ).encode()
    owners = images.Owners(TAGS, IDS)
    shown = json.loads(images.filter_list(answer, "bob", owners))
    assert [(s["Id"], s["RepoTags"], s["RepoDigests"]) for s in shown] == [
        (B, ["busybox:latest"], BASE["RepoDigests"]),
        (D, ["bob/tool:1"], []),
        (E, ["bob/x:latest", "busybox:1"], []),
        (F, [], []),
        (C, ["busybox:2"], []),  # visible through a shared tag, without alice's name
    ]


def test_inspect_answer_without_other_users_names():
    owners = images.Owners(TAGS, IDS)
    info = json.loads(images.filter_inspect(json.dumps(ALICE_PUSHED).encode(), "bob", owners))
    assert info["RepoTags"] == ["busybox:2"] and info["RepoDigests"] == []


@pytest.mark.parametrize(
    ("ref", "tag"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("library/busybox:1", "docker.io/library/busybox:1"),
        ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/library/busybox:2", "docker.io/library/busybox:2"),
        ("alice/model", "docker.io/alice/model:latest"),
        ("localhost:5000/x/y:2", "localhost:5000/x/y:2"),
        ("localhost/x", "localhost/x:latest"),
        ("ghcr.io/a/b/c:v1.0", "ghcr.io/a/b/c:v1.0"),
        ("Foo/bar", "Foo/bar:latest"),  # an uppercase first part is a registry, as in Docker
        ("foo/Bar", None),
        ("Busybox", None),
        ("a" * 64, None),
        ("busybox@sha256:" + "1" * 64, None),
        ("busybox:bad/tag", None),
        ("", None),
    ],
)
def test_normalise_tag(ref, tag):
    assert normalise_tag(ref) == tag


def test_familiar():
    assert familiar("docker.io/library/busybox:1") == "busybox:1"
    assert familiar("docker.io/alice/model:latest") == "alice/model:latest"
    assert familiar("docker.io/library/a/b:1") == "library/a/b:1"
    assert familiar("ghcr.io/x:1") == "ghcr.io/x:1"


def test_answer_ids_and_removed():
    assert images.answer_ids(b'{"Id":"%s"}' % A.encode()) == [A]
    stream = b'{"status":"Downloading"}\r\n{"status":"%s"}\r\n' % B.encode()
    assert images.answer_ids(stream) == [B]
    gone = json.dumps([{"Untagged": "alice/model:latest"}, {"Deleted": A}]).encode()
    assert images.removed(gone) == (["docker.io/alice/model:latest"], [A])


# ---- the <user>/... namespace --------------------------------------------------------------

USERS = {"alice", "bob"}


def _namespaced(message_for: str, user: str) -> str:
    return (
        f"ds01: the image name {message_for} is in alice's namespace: only alice may write it. "
        f"To fix: use a name of your own, e.g. {user}/{message_for.rsplit('/', 1)[-1]}"
    )


NAMESPACE_ROWS = [
    # (row id, user, method, target, exact message or None when allowed)
    (
        "tag_into_alices_namespace",
        BOB,
        "POST",
        "/images/busybox/tag?repo=alice/new&tag=1",
        _namespaced("alice/new", "bob"),
    ),
    (
        "build_into_alices_namespace",
        BOB,
        "POST",
        "/build?t=alice/next:v2",
        _namespaced("alice/next", "bob"),
    ),
    (
        "pull_into_alices_namespace",
        BOB,
        "POST",
        "/images/create?fromImage=alice/hub-model&tag=latest",
        _namespaced("alice/hub-model", "bob"),
    ),
    (
        "registry_prefixed",
        BOB,
        "POST",
        "/images/busybox/tag?repo=localhost:5000/alice/x&tag=1",
        _namespaced("localhost:5000/alice/x", "bob"),
    ),
    ("own_namespace", ALICE, "POST", "/images/busybox/tag?repo=alice/new&tag=1", None),
    (
        "not_a_user",  # carol is no user, but carol/new is still outside bob's namespace
        BOB,
        "POST",
        "/images/busybox/tag?repo=carol/new&tag=1",
        "ds01: the image name carol/new:1 is outside your namespace bob/: a plain or "
        "public-looking name could stand in for a public image that other users' builds and "
        "runs would use. To fix: name it bob/new:1 (Compose: set image: bob/NAME in the "
        "compose file)",
    ),
    ("compose_v1_name", BOB, "POST", "/images/busybox/tag?repo=proj_web&tag=latest", None),
    ("devcontainer_name", BOB, "POST", "/build?t=vsc-proj-0123abcd", None),
    (
        "public_name_nobody_pulled",
        BOB,
        "POST",
        "/build?t=python:3.11",
        "ds01: the image name python:3.11 is outside your namespace bob/: a plain or "
        "public-looking name could stand in for a public image that other users' builds and "
        "runs would use. To fix: name it bob/python:3.11 (Compose: set image: bob/NAME in the "
        "compose file)",
    ),
    ("official_image_pull", BOB, "POST", "/images/create?fromImage=ubuntu&tag=22.04", None),
]


@pytest.mark.parametrize("row", NAMESPACE_ROWS, ids=[r[0] for r in NAMESPACE_ROWS])
def test_user_namespace_belongs_to_that_user(row, limits_of):
    """Nobody but alice writes alice/...: a squatted name would be what alice's run runs."""
    _, user, method, target, message = row
    state = image_state()
    state = State(target=state.target, related=state.related, is_user=USERS.__contains__)
    decision = decide(Request(method, f"/v1.41{target}"), user, limits_of(user), state)
    if message is None:
        assert decision.allowed, decision.message
    else:
        assert decision.message == message
