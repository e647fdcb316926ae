"""DS01's record of who wrote which image tag and image ID (Docker keeps no owner for images).

A JSON file in ds01d's state directory, loaded at start and rewritten atomically on every
change, so ownership survives a restart: a lost record would turn every user's images into
shared ones. A tag is claimed when the gateway forwards the write (build ``t``, tag, commit,
import), before dockerd writes it, so two users racing for one name cannot both win; IDs are
recorded from dockerd's answer (commit, import); removals from ``docker rmi``'s answer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType

from policy import images
from policy.decision import Decision, deny
from policy.identity import Identity
from policy.limits import Limits
from policy.routes import Route
from policy.state import ObjectFacts

log = logging.getLogger("ds01.images")

FILE_NAME = "image-owners.json"
_VERSION = 1


class RecordError(OSError):
    """The record on disk cannot be read: ds01d will not start with ownership forgotten."""


class ImageOwners:
    """tag -> user and image ID -> user; ``path`` None keeps it in memory only (tests)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._tags: dict[str, str] = {}
        self._ids: dict[str, str] = {}
        self._facts = images.owners_facts(MappingProxyType({}), MappingProxyType({}))
        if path is not None:
            self._load(path)

    # ---- reading -------------------------------------------------------------------------

    def facts(self) -> ObjectFacts:
        """A snapshot for one decision (``State.related[images.OWNERS_KEY]``)."""
        return self._facts

    def owners(self) -> images.Owners:
        return images.owners_of_facts(self._facts)

    def tag_owner(self, tag: str) -> str | None:
        return self._tags.get(tag)

    # ---- changing ------------------------------------------------------------------------

    def claim_writes(self, route: Route, identity: Identity, limits: Limits) -> Decision | None:
        """Record the tags an allowed request will write as its user's; a denial if it lost.

        Runs between two awaits, so checking and taking a name is atomic. Admins' writes
        change no owner: what an admin writes under a name nobody owns stays shared.
        """
        if limits.is_admin or identity.is_direct:
            return None
        tags = images.tag_writes(route)
        for tag in tags:
            owner = self._tags.get(tag)
            if owner is not None and owner != identity.user:
                return deny(
                    "image_tag_taken",
                    f"the image name {images.familiar(tag)} belongs to another user",
                    f"use a name of your own, e.g. {images.suggest(tag, identity.user)}",
                )
        new = [t for t in tags if self._tags.get(t) != identity.user]
        if not new:
            return None
        return self._change(lambda: self._tags.update(dict.fromkeys(new, identity.user)))

    def claim_ids(self, ids: list[str], user: str) -> None:
        """Image IDs a user's commit or import produced (best effort: logged if not saved)."""
        new = [i for i in ids if i not in self._ids]
        if new and self._change(lambda: self._ids.update(dict.fromkeys(new, user))):
            log.error("could not record image IDs %s of %s", new, user)

    def forget(self, tags: list[str], ids: list[str]) -> None:
        """Tags untagged and images deleted (``docker rmi``): their names are free again."""
        gone_tags = [t for t in tags if t in self._tags]
        gone_ids = [i for i in ids if i in self._ids]
        if not gone_tags and not gone_ids:
            return

        def drop() -> None:
            for tag in gone_tags:
                del self._tags[tag]
            for image_id in gone_ids:
                del self._ids[image_id]

        if self._change(drop):
            log.error("could not record the removal of %s %s", gone_tags, gone_ids)

    def _change(self, apply: Callable[[], None]) -> Decision | None:
        """Apply a change and save it; on a failed save undo it and return a denial."""
        before = dict(self._tags), dict(self._ids)
        apply()
        try:
            self._save()
        except OSError as exc:
            self._tags, self._ids = before
            log.error("cannot save the image owner record %s: %s", self.path, exc)
            return deny(
                "image_record",
                "DS01 could not record who owns this image name",
                "try again; if it persists, ask an admin (ds01d's state directory)",
                503,
            )
        self._facts = images.owners_facts(
            MappingProxyType(dict(self._tags)), MappingProxyType(dict(self._ids))
        )
        return None

    # ---- the file ------------------------------------------------------------------------

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise RecordError(f"cannot read the image owner record {path}: {exc}") from None
        tags, ids = (data or {}).get("tags"), (data or {}).get("ids")
        if not isinstance(tags, dict) or not isinstance(ids, dict):
            raise RecordError(f"the image owner record {path} is not DS01's format")
        self._tags = {str(k): str(v) for k, v in tags.items()}
        self._ids = {str(k): str(v) for k, v in ids.items()}
        self._facts = images.owners_facts(
            MappingProxyType(dict(self._tags)), MappingProxyType(dict(self._ids))
        )

    def _save(self) -> None:
        if self.path is None:
            return
        data = json.dumps(
            {"version": _VERSION, "tags": self._tags, "ids": self._ids}, sort_keys=True, indent=1
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{FILE_NAME}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)  # readers see the old record or the new, never half
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def answer_screen(
    owners: ImageOwners, route: Route, identity: Identity, limits: Limits
) -> Callable[[int, bytes], bytes | None] | None:
    """What must happen with dockerd's answer to this image request, if anything.

    The callable returns a replacement body (same status) or None to relay the answer as is.
    """
    endpoint, user = route.endpoint, identity.user
    admin = limits.is_admin or identity.is_direct
    if endpoint == "/images/{name*}" and route.method == "DELETE":
        return _forget_removed(owners)
    if admin:
        return None
    if endpoint == "/images/json":
        return lambda status, body: (
            images.filter_list(body, user, owners.owners()) if status == 200 else None
        )
    if endpoint == "/images/{name*}/json":
        return lambda status, body: (
            images.filter_inspect(body, user, owners.owners()) if status == 200 else None
        )
    if endpoint == "/commit" or (
        endpoint == "/images/create" and not route.q("fromImage") and route.q("fromSrc") == "-"
    ):
        return _record_ids(owners, user)
    return None


def _forget_removed(owners: ImageOwners) -> Callable[[int, bytes], bytes | None]:
    def on_answer(status: int, body: bytes) -> None:
        if status == 200:
            with contextlib.suppress(ValueError):
                owners.forget(*images.removed(body))

    return on_answer


def _record_ids(owners: ImageOwners, user: str) -> Callable[[int, bytes], bytes | None]:
    def on_answer(status: int, body: bytes) -> None:
        if status in (200, 201):
            owners.claim_ids(images.answer_ids(body), user)

    return on_answer
