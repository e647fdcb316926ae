"""Who may use, write, push and remove which image: every image tag has an owner, or is shared.

DS01 keeps its own record of the tags (``repository:tag``) and image IDs each user wrote
(``ds01d/image_owners.py``); Docker keeps no owner for images. A tag nobody owns is
shared: base images pulled by anyone, images that were there before DS01, what admins write.
A user uses their own and shared images, and sees another user's image exactly as a missing
one. Pure: the record and dockerd's view of the named images arrive as ``State.related``:

- ``OWNERS_KEY``: the record (``details["tags"]``: tag -> user, ``details["ids"]``: ID -> user)
- ``image_key(ref)``: the image a reference resolves to in dockerd (absent: no such image)
- ``tag_key(tag)``: present when that (normalised) tag exists in dockerd

References are compared normalised the way Docker does: ``busybox`` is
``docker.io/library/busybox:latest``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .decision import Decision, allow, deny, not_found
from .identity import Identity
from .limits import Limits
from .routes import Route
from .state import ObjectFacts, State

OWNERS_KEY = "image-owners"
DEFAULT_DOMAIN = "docker.io"
_LEGACY_DOMAIN = "index.docker.io"
_OFFICIAL = "library"

_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"^{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?$")
_PATH_PART = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}$")
_HEX64 = re.compile(r"^[a-f0-9]{64}$")
_NAME_MAX = 255


def image_key(ref: str) -> str:
    return f"image:{ref}"


def tag_key(tag: str) -> str:
    return f"tag:{tag}"


# ---- references --------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """A parsed image reference: full repository name, tag and digest (either may be empty)."""

    name: str  # e.g. "docker.io/library/busybox"
    tag: str = ""
    digest: str = ""

    @property
    def tagged(self) -> str:
        """``name:tag``, ``latest`` when no tag was given (Docker's TagNameOnly)."""
        return f"{self.name}:{self.tag or 'latest'}"


def parse_reference(text: str) -> Reference | None:
    """Parse like Docker's ``ParseNormalizedNamed``; None for what Docker would refuse."""
    if not text or _HEX64.match(text):
        return None  # a bare 64-hex string is an ID, never a repository name
    rest, _, digest = text.partition("@")
    if digest and not _DIGEST.match(digest):
        return None
    tag = ""
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.match(tag):
            return None
    name = _normalise_name(rest)
    if name is None or len(name) > _NAME_MAX:
        return None
    return Reference(name, tag, digest)


def _normalise_name(name: str) -> str | None:
    first, slash, remainder = name.partition("/")
    is_domain = slash and (
        any(c in first for c in ".:") or first == "localhost" or first.lower() != first
    )
    domain, path = (first, remainder) if is_domain else (DEFAULT_DOMAIN, name)
    if domain == _LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = f"{_OFFICIAL}/{path}"
    if not _DOMAIN.match(domain) or not all(_PATH_PART.match(p) for p in path.split("/")):
        return None
    return f"{domain}/{path}"


def normalise_tag(text: str) -> str | None:
    """``repository:tag`` as Docker stores it, or None (invalid, or a digest reference)."""
    ref = parse_reference(text)
    if ref is None or ref.digest:
        return None
    return ref.tagged


def familiar(name: str) -> str:
    """A normalised reference as Docker shows it: ``docker.io/library/busybox:1`` -> ``busybox:1``."""
    if name.startswith(f"{DEFAULT_DOMAIN}/"):
        name = name[len(DEFAULT_DOMAIN) + 1 :]
        if name.startswith(f"{_OFFICIAL}/") and "/" not in name[len(_OFFICIAL) + 1 :]:
            name = name[len(_OFFICIAL) + 1 :]
    return name


def suggest(tag: str, user: str) -> str:
    """The same image name under the user's own namespace: ``busybox:1`` -> ``bob/busybox:1``."""
    last = familiar(tag).rsplit("/", 1)[-1]
    return f"{user}/{last}"


def _with_tag(repo: str, tag: str) -> str | None:
    """``repo`` (which may carry a tag) with ``tag`` replacing it, as moby's WithTag does."""
    ref = parse_reference(repo)
    if ref is None or ref.digest:
        return None
    if tag and not _TAG.match(tag):
        return None
    return f"{ref.name}:{tag or ref.tag or 'latest'}"


# ---- the record and dockerd's view, as the engine receives them ---------------------------


@dataclass(frozen=True)
class Owners:
    """DS01's record: tag -> user, image ID -> user."""

    tags: Mapping[str, str]
    ids: Mapping[str, str]

    def repo_owners(self, name: str) -> set[str]:
        """Everyone owning some tag of repository ``name`` (its digests are theirs too)."""
        prefix = f"{name}:"
        return {user for tag, user in self.tags.items() if tag.startswith(prefix)}


def owners_facts(tags: Mapping[str, str], ids: Mapping[str, str]) -> ObjectFacts:
    """The record as the State carries it (``related[OWNERS_KEY]``)."""
    return ObjectFacts(kind="image-owners", id="", owner=None, details={"tags": tags, "ids": ids})


def owners_of(state: State) -> Owners:
    """The record the state carries; an empty one when none was looked up."""
    facts = state.related.get(OWNERS_KEY)
    return Owners({}, {}) if facts is None else owners_of_facts(facts)


def owners_of_facts(facts: ObjectFacts) -> Owners:
    return Owners(facts.details.get("tags") or {}, facts.details.get("ids") or {})


def image_facts(info: Mapping[str, Any], ref: str = "") -> ObjectFacts:
    """An image as dockerd's inspect (or list) describes it: ID, tags and digests."""
    return ObjectFacts(
        kind="image",
        id=str(info.get("Id") or ""),
        owner=None,
        name=ref,
        details={
            "tags": tuple(info.get("RepoTags") or ()),
            "digests": tuple(info.get("RepoDigests") or ()),
        },
    )


def _tag_visible(tag: str, user: str, owners: Owners) -> bool:
    owner = owners.tags.get(tag)
    return owner is None or owner == user


def _digest_visible(text: str, user: str, owners: Owners) -> bool:
    ref = parse_reference(text)
    if ref is None:
        return False
    return owners.repo_owners(ref.name) <= {user}


def _normalised_tags(image: ObjectFacts) -> list[str]:
    found = (normalise_tag(t) for t in image.details.get("tags") or ())
    return [t for t in found if t is not None]


def has_tag(image: ObjectFacts, tag: str) -> bool:
    """Whether the normalised ``tag`` is one of ``image``'s tags."""
    return tag in _normalised_tags(image)


def _ref_kind(ref: str, image: ObjectFacts) -> tuple[str, str]:
    """How dockerd resolved ``ref`` to ``image``: ("tag", T), ("digest", R) or ("id", "")."""
    parsed = parse_reference(ref)
    if parsed is not None and not parsed.digest and parsed.tagged in _normalised_tags(image):
        return "tag", parsed.tagged
    if parsed is not None and parsed.digest:
        return "digest", ref
    return "id", ""


def usable(ref: str, image: ObjectFacts, user: str, owners: Owners) -> bool:
    """May ``user`` use ``image``, named by ``ref``: an own or shared tag, or an own ID."""
    kind, tag = _ref_kind(ref, image)
    if kind == "tag":
        return _tag_visible(tag, user, owners)
    if kind == "digest":
        return _digest_visible(ref, user, owners)
    return image_visible(image, user, owners)


def image_visible(image: ObjectFacts, user: str, owners: Owners) -> bool:
    """Some own or shared tag or digest points at it, or the record says the ID is theirs."""
    if owners.ids.get(image.id) == user:
        return True
    if any(_tag_visible(t, user, owners) for t in _normalised_tags(image)):
        return True
    digests = [d for d in image.details.get("digests") or () if not d.startswith("<none>")]
    return any(_digest_visible(d, user, owners) for d in digests)


# ---- rules --------------------------------------------------------------------------------


def _missing(ref: str, create: bool = False) -> Decision:
    decision = not_found("image", ref)
    # On a create the docker CLI takes a 404 to mean "pull it": answer 400, as create.py does.
    return replace(decision, status=400) if create else decision


def check_image_use(
    ref: str, identity: Identity, limits: Limits, state: State, *, create: bool = False
) -> Decision | None:
    """None when ``ref`` may be used; else the denial (another user's image looks missing).

    With ``create``, an image dockerd does not know passes (dockerd answers 404 and the CLI
    pulls it); elsewhere it is answered here as missing, as dockerd would answer it.
    """
    if limits.is_admin or identity.is_direct:
        return None
    image = state.related.get(image_key(ref))
    if image is None:
        return None if create else _missing(ref)
    if usable(ref, image, identity.user, owners_of(state)):
        return None
    return _missing(ref, create)


def check_tag_writes(
    refs: Iterable[str], identity: Identity, limits: Limits, state: State
) -> Decision | None:
    """None when the user may write every tag in ``refs`` (build ``t``, tag, commit, import).

    A tag another user owns, or a shared tag that exists, is refused; the fix suggests the
    user's own namespace. Admins write any tag.
    """
    if limits.is_admin or identity.is_direct:
        return None
    owners = owners_of(state)
    for ref in refs:
        tag = normalise_tag(ref)
        if tag is None:
            return _bad_reference(ref)
        refusal = _tag_write_refusal(tag, identity.user, owners, state)
        if refusal is not None:
            return refusal
    return None


def _bad_reference(ref: str) -> Decision:
    return deny(
        "bad_reference",
        f"{ref!r} is not a valid image name (lowercase repository[:tag], no digest)",
        "use a name like yourname/model:latest",
        400,
    )


def namespace_of(name: str) -> str:
    """The first path component of a normalised repository name (``docker.io/alice/m`` ->
    ``alice``); empty for a one-component path."""
    path = name.split("/", 1)[1] if "/" in name else ""
    first, slash, _ = path.partition("/")
    return first if slash else ""


def _namespace_refusal(name: str, user: str, state: State) -> Decision | None:
    """``<user>/...`` belongs to that Unix user alone: another user may not write it first
    (a squatted ``alice/model`` would be what alice's ``docker run alice/model`` runs)."""
    namespace = namespace_of(name)
    if not namespace or namespace == user or not state.is_user(namespace):
        return None
    shown = familiar(name)
    return deny(
        "image_namespace",
        f"the image name {shown} is in {namespace}'s namespace: only {namespace} may write it",
        f"use a name of your own, e.g. {user}/{shown.rsplit('/', 1)[-1]}",
    )


# Plain names the tools write for a user, which no public image can have: the Dev Containers
# CLI's ``vsc-<folder>-<hash>`` and Compose v1's ``<project>_<service>`` (official images use
# no underscore).
_TOOL_NAME = re.compile(r"^docker\.io/library/(?:vsc-[a-z0-9._-]+|[a-z0-9.-]*_[a-z0-9._-]*)$")


def _outside_namespace_refusal(tag: str, user: str) -> Decision | None:
    """A user writes names in their own namespace (or a tool's plain name) only.

    dockerd resolves a build's ``FROM python:3.11`` and a ``docker run python:3.11`` from its
    local images first: a student's image tagged ``python:3.11`` before anyone pulled it would
    be what every other user's build and run then use, as them.
    """
    name = tag.rsplit(":", 1)[0]
    if namespace_of(name) == user or _TOOL_NAME.match(name):
        return None
    shown = familiar(tag)
    return deny(
        "image_namespace_required",
        f"the image name {shown} is outside your namespace {user}/: a plain or public-looking "
        "name could stand in for a public image that other users' builds and runs would use",
        f"name it {suggest(tag, user)} (Compose: set image: {user}/NAME in the compose file)",
    )


def _tag_write_refusal(tag: str, user: str, owners: Owners, state: State) -> Decision | None:
    owner = owners.tags.get(tag)
    if owner == user:
        return None
    shown = familiar(tag)
    fix = f"use a name of your own, e.g. {suggest(tag, user)}"
    if owner is not None:
        return deny("image_tag_taken", f"the image name {shown} belongs to another user", fix)
    squatted = _namespace_refusal(tag.rsplit(":", 1)[0], user, state)
    if squatted is not None:
        return squatted
    if tag_key(tag) in state.related:
        return deny(
            "image_tag_shared",
            f"the image name {shown} is a shared image; only an admin can replace it",
            fix,
        )
    return _outside_namespace_refusal(tag, user)


def tag_writes(route: Route) -> list[str]:
    """The normalised tags a request would write as its user's own (pulls write shared tags)."""
    endpoint = route.endpoint
    if endpoint == "/build":
        found = [normalise_tag(t) for t in route.query.get("t", [])]
    elif endpoint in ("/images/{name*}/tag", "/commit") or (
        endpoint == "/images/create" and not route.q("fromImage")
    ):
        found = [_with_tag(route.q("repo"), route.q("tag"))] if route.q("repo") else []
    else:
        found = []
    return [t for t in found if t is not None]


def check_route_writes(
    route: Route, identity: Identity, limits: Limits, state: State
) -> Decision | None:
    """``check_tag_writes`` for the tags this request writes (build ``t``, commit, tag, import)."""
    return check_tag_writes(_raw_writes(route), identity, limits, state)


def _raw_writes(route: Route) -> list[str]:
    """The written references as the request gives them (checked, then normalised)."""
    if route.endpoint == "/build":
        return list(route.query.get("t", []))
    repo, tag = route.q("repo"), route.q("tag")
    if not repo:
        return []
    target = _with_tag(repo, tag)
    return [target if target is not None else repo]


def decide_image_route(route: Route, identity: Identity, limits: Limits, state: State) -> Decision:
    """The decision for an ``/images/...`` route (list filtering is done on dockerd's answer)."""
    if limits.is_admin or identity.is_direct:
        return _pinned(route, state, allow(audited=_admin_on_others(route, identity, state)))
    rule = _RULES.get(route.endpoint)
    refusal = rule(route, identity, limits, state) if rule is not None else None
    return refusal or _pinned(route, state, allow())


# Routes forwarded with the full image ID when they named the image by ID or ID prefix, so
# dockerd cannot resolve the prefix (or a tag of that name made meanwhile) to another image.
_PINNED = frozenset(
    {
        "/images/{name*}/get",
        "/images/{name*}/history",
        "/images/{name*}/json",
        "/images/{name*}/tag",
        "/images/{name*}",
    }
)


def _pinned(route: Route, state: State, decision: Decision) -> Decision:
    if route.endpoint == "/images/get":  # docker save: each of ?names= pinned
        names = route.query.get("names", [])
        pinned = [_full_id(ref, state) for ref in names]
        if pinned == names:
            return decision
        query = {k: list(v) for k, v in (decision.query or route.query).items()}
        query["names"] = pinned
        return replace(decision, query=query)
    if route.endpoint not in _PINNED:
        return decision
    ref = route.params.get("name", "")
    full = _full_id(ref, state)
    return decision if full == ref else replace(decision, params={"name": full})


def _full_id(ref: str, state: State) -> str:
    """The image's full ID when ``ref`` names it by ID or ID prefix; else ``ref`` itself (a
    tag or digest names exactly what it names: removing it untags)."""
    image = state.related.get(image_key(ref))
    if image is None or not image.id or ref == image.id or _ref_kind(ref, image)[0] != "id":
        return ref
    return image.id


def _admin_on_others(route: Route, identity: Identity, state: State) -> bool:
    """An admin using, writing or removing a tag or image some other user owns."""
    owners = owners_of(state)
    for key, facts in state.related.items():
        if key.startswith("image:"):
            tags = _normalised_tags(facts)
            if any(owners.tags.get(t) not in (None, identity.user) for t in tags):
                return True
            if owners.ids.get(facts.id) not in (None, identity.user):
                return True
    return any(owners.tags.get(t) not in (None, identity.user) for t in tag_writes(route))


def _use_named(route: Route, identity: Identity, limits: Limits, state: State) -> Decision | None:
    return check_image_use(route.params.get("name", ""), identity, limits, state)


def _save_many(route: Route, identity: Identity, limits: Limits, state: State) -> Decision | None:
    for ref in route.query.get("names", []):
        refusal = check_image_use(ref, identity, limits, state)
        if refusal is not None:
            return refusal
    return None


def _tag(route: Route, identity: Identity, limits: Limits, state: State) -> Decision | None:
    refusal = _use_named(route, identity, limits, state)
    if refusal is not None:
        return refusal
    if not route.q("repo"):
        return deny("bad_reference", "docker tag needs a target name", "docker tag SOURCE TARGET")
    return check_route_writes(route, identity, limits, state)


def _create(route: Route, identity: Identity, limits: Limits, state: State) -> Decision | None:
    if route.q("fromImage"):  # dockerd pulls when fromImage is set, whatever else is
        return _pull(route, identity, state)
    return check_route_writes(route, identity, limits, state)


def _pull(route: Route, identity: Identity, state: State) -> Decision | None:
    """A pull refreshes shared tags from their registry; it may not replace another's tag."""
    image, tag = route.q("fromImage").removesuffix(":"), route.q("tag")
    ref = parse_reference(image)
    if ref is None:
        return None  # dockerd refuses what it cannot parse; nothing is written
    if _DIGEST.match(tag) or (ref.digest and not tag):
        return None  # by digest: no tag is written
    owners, user = owners_of(state), identity.user
    squatted = _namespace_refusal(ref.name, user, state)
    if squatted is not None:
        return squatted
    if not tag and not ref.tag:  # docker pull --all-tags: every tag of the repository
        if owners.repo_owners(ref.name) - {user}:
            return deny(
                "image_tag_taken",
                f"some tags of {familiar(ref.name)} belong to another user; a pull may not "
                "replace them",
                "pull one tag at a time (docker pull NAME:TAG)",
            )
        return None
    target = f"{ref.name}:{tag or ref.tag}"
    owner = owners.tags.get(target)
    if owner is None or owner == user:
        return None
    return deny(
        "image_tag_taken",
        f"the image name {familiar(target)} belongs to another user; a pull may not replace it",
        "ask an admin to pull it, or pull another tag",
    )


def _load(route: Route, identity: Identity, limits: Limits, state: State) -> Decision | None:
    return deny(
        "image_load",
        "docker load is for admins: the image names are inside the tar, so DS01 cannot check "
        "them before dockerd writes them",
        "use docker import (a root filesystem tar) or docker build, or ask an admin to load "
        "shared images",
    )


def _push(route: Route, identity: Identity, limits: Limits, state: State) -> Decision | None:
    name, tag = route.params.get("name", ""), route.q("tag")
    ref = parse_reference(name)
    if ref is None:
        return None  # dockerd refuses it; nothing is read
    if _DIGEST.match(tag) or ref.digest or (not tag and not ref.tag):
        return deny(
            "image_push_tag",
            "push one tag you own at a time (not all tags of a repository, not by digest)",
            f"docker push {familiar(ref.name)}:TAG",
        )
    target = f"{ref.name}:{tag or ref.tag}"
    owner = owners_of(state).tags.get(target)
    if owner == identity.user:
        return None
    if owner is not None:
        return _missing(familiar(target))
    if tag_key(target) not in state.related:
        return None  # dockerd answers that no such image exists
    return deny(
        "image_push_shared",
        f"the image {familiar(target)} is a shared image; you can push only images you built "
        "or tagged yourself",
        f"tag it under your own name first: docker tag {familiar(target)} "
        f"{suggest(target, identity.user)}",
    )


def _remove(route: Route, identity: Identity, limits: Limits, state: State) -> Decision | None:
    ref = route.params.get("name", "")
    refusal = check_image_use(ref, identity, limits, state)
    if refusal is not None:
        return refusal
    image = state.related[image_key(ref)]
    owners, user = owners_of(state), identity.user
    kind, tag = _ref_kind(ref, image)
    if kind == "tag":
        mine = owners.tags.get(tag) == user
    elif kind == "digest":
        parsed = parse_reference(ref)
        mine = parsed is not None and owners.repo_owners(parsed.name) == {user}
    else:
        mine = _all_mine(image, user, owners)
    if mine:
        return None
    return deny(
        "image_remove_shared",
        f"the image {ref} is shared (or also tagged by others); only an admin can remove it",
        "remove only names you made yourself (docker rmi yourname/image:tag)",
    )


def _all_mine(image: ObjectFacts, user: str, owners: Owners) -> bool:
    tags = _normalised_tags(image)
    if any(owners.tags.get(t) != user for t in tags):
        return False
    digests = [d for d in image.details.get("digests") or () if not d.startswith("<none>")]
    for digest in digests:
        parsed = parse_reference(digest)
        if parsed is None or owners.repo_owners(parsed.name) != {user}:
            return False
    return bool(tags) or owners.ids.get(image.id) == user


_RULES = {
    "/images/create": _create,
    "/images/load": _load,
    "/images/get": _save_many,
    "/images/{name*}/get": _use_named,
    "/images/{name*}/history": _use_named,
    "/images/{name*}/json": _use_named,
    "/images/{name*}/push": _push,
    "/images/{name*}/tag": _tag,
    "/images/{name*}": _remove,
    "/commit": check_route_writes,
    "/build": check_route_writes,
}


# ---- what the service looks up ------------------------------------------------------------


def lookups(route: Route, body: Mapping[str, Any] | None) -> tuple[list[str], list[str]]:
    """(references to resolve in dockerd, normalised tags whose existence matters)."""
    endpoint = route.endpoint
    refs: list[str] = []
    if endpoint.startswith("/images/{name*}"):
        refs.append(route.params.get("name", ""))
    elif endpoint == "/images/get":
        refs.extend(route.query.get("names", []))
    elif endpoint == "/containers/create" and body and isinstance(body.get("Image"), str):
        refs.append(body["Image"])
    tags = tag_writes(route)
    if endpoint == "/images/{name*}/push":
        ref = parse_reference(route.params.get("name", ""))
        if ref is not None and (route.q("tag") or ref.tag):
            tags.append(f"{ref.name}:{route.q('tag') or ref.tag}")
    return [r for r in refs if _LOOKUP_SAFE.match(r) and "/." not in r], tags


# What may be looked up by name: a reference or an ID, never a path of its own.
_LOOKUP_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]*$")


# Routes whose decision needs the record and the named images.
FACT_ROUTES = frozenset({*_RULES, "/containers/create"})


# ---- answers a non-admin sees filtered ----------------------------------------------------


def filter_list(answer: bytes, user: str, owners: Owners) -> bytes:
    """``GET /images/json``'s answer with only the images, tags and digests ``user`` may see."""
    summaries = json.loads(answer)
    if not isinstance(summaries, list):
        raise ValueError("the image list is not a JSON list")
    kept = [_visible_part(s, user, owners) for s in summaries if isinstance(s, dict)]
    return json.dumps([s for s in kept if s is not None]).encode()


def filter_inspect(answer: bytes, user: str, owners: Owners) -> bytes:
    """An image inspect's answer with another user's tags and digests left out."""
    info = json.loads(answer)
    if not isinstance(info, dict):
        raise ValueError("the image inspect answer is not a JSON object")
    trimmed = _visible_part(info, user, owners, keep_image=True)
    return json.dumps(trimmed).encode()


def _visible_part(
    info: dict[str, Any], user: str, owners: Owners, keep_image: bool = False
) -> dict[str, Any] | None:
    image = image_facts(info)
    if not keep_image and not image_visible(image, user, owners):
        return None
    out = dict(info)
    if isinstance(info.get("RepoTags"), list):
        out["RepoTags"] = [
            t for t in info["RepoTags"] if _placeholder(t) or _tag_text_visible(t, user, owners)
        ]
    if isinstance(info.get("RepoDigests"), list):
        out["RepoDigests"] = [
            d
            for d in info["RepoDigests"]
            if _placeholder(d) or _digest_visible(str(d), user, owners)
        ]
    return out


def _placeholder(text: Any) -> bool:
    return isinstance(text, str) and text.startswith("<none>")


def _tag_text_visible(text: Any, user: str, owners: Owners) -> bool:
    tag = normalise_tag(text) if isinstance(text, str) else None
    return tag is not None and _tag_visible(tag, user, owners)


def answer_ids(answer: bytes) -> list[str]:
    """Image IDs a commit (``{"Id": ...}``) or an import (a JSON stream) answered with."""
    found: list[str] = []
    decoder, text, pos = json.JSONDecoder(), answer.decode("utf-8", "replace"), 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return found
        try:
            value, pos = decoder.raw_decode(text, pos)
        except ValueError:
            return found
        if isinstance(value, dict):
            for key in ("Id", "status"):
                item = value.get(key)
                if isinstance(item, str) and re.match(r"^sha256:[a-f0-9]{64}$", item):
                    found.append(item)


def removed(answer: bytes) -> tuple[list[str], list[str]]:
    """(normalised tags untagged, image IDs deleted) from ``DELETE /images/{name}``'s answer."""
    items = json.loads(answer)
    tags: list[str] = []
    ids: list[str] = []
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict):
            continue
        tag = normalise_tag(item.get("Untagged") or "") if item.get("Untagged") else None
        if tag is not None:
            tags.append(tag)
        if isinstance(item.get("Deleted"), str):
            ids.append(item["Deleted"])
    return tags, ids
