"""Who a non-admin's container and exec processes run as (the policy's ``run_as``).

Docker has no per-container user namespace, so root in a container is root on every host file
it can reach through a bind mount: it can chown a copied shell to root and set its setuid bit,
or mknod a raw disk node. ``run_as: user`` (the default) closes that class at its root: the
container runs as the caller's own uid:gid with their groups and ``no-new-privileges``, so it
can do to host files exactly what the user could do in a shell, no more. ``run_as: root`` keeps
root inside the container for images that need it, and then no host path may be mounted.
"""

from __future__ import annotations

from typing import Any

from .decision import Denied, deny
from .identity import Identity
from .limits import Limits

NO_NEW_PRIVILEGES = "no-new-privileges"
_RUN_AS_FIX = (
    "drop -u/--user (your containers run as you, so files you write stay yours); to install "
    "software, put it in a Dockerfile and docker build (root inside a build is fine)"
)


def runs_as_user(identity: Identity, limits: Limits) -> bool:
    """True when this caller's containers must run as their own uid."""
    return not limits.is_admin and limits.run_as != "root"


def as_user(identity: Identity) -> str:
    """The ``User`` value a ``run_as: user`` container or exec gets: ``uid:gid``."""
    if identity.uid is None:
        raise Denied(
            deny(
                "run_as",
                f"DS01 does not know the numeric uid of {identity.user}",
                "connect through the DS01 gateway socket as a Unix user",
            )
        )
    return f"{identity.uid}:{_primary_gid(identity)}"


def _primary_gid(identity: Identity) -> int | None:
    # NSS always gives one; an identity built without it uses the uid (Debian's user groups).
    return identity.gid if identity.gid is not None else identity.uid


def checked_user(requested: str, identity: Identity, limits: Limits, what: str) -> str:
    """The user ``requested`` (a create's or exec's ``User``) becomes, or a refusal.

    Empty, the caller's own uid (with one of their gids) or their name: the caller's uid:gid.
    Root in any spelling, or another numeric uid: refused, because it would be root (or someone
    else) on the host files the container can reach. Any other name is taken to mean the
    caller: inside an image a name may map to any uid (even 0), so it is never trusted.
    """
    own = as_user(identity)
    text = requested.strip()
    name, _, group = text.partition(":")
    if name in ("", identity.user, str(identity.uid)) and _own_group(group, identity):
        return own
    if name == "root" or name.isdigit() or group == "root" or group.isdigit():
        raise Denied(
            deny(
                "run_as",
                f"{what} -u {text} is not allowed: containers of {limits.who()} run as you "
                f"(uid {identity.uid}), never as root or another user",
                _RUN_AS_FIX,
            )
        )
    return own


def _own_group(group: str, identity: Identity) -> bool:
    if not group:
        return True
    if group.isdigit():
        return int(group) in identity.gids or int(group) == _primary_gid(identity)
    return group in identity.groups


def checked_group_add(requested: list[Any] | None, identity: Identity, limits: Limits) -> list[str]:
    """``GroupAdd`` for a ``run_as: user`` container: the caller's groups, nothing else."""
    for entry in requested or []:
        text = str(entry)
        if not _own_group(text, identity):
            raise Denied(
                deny(
                    "group_add",
                    f"--group-add {text} is not allowed: it is not one of your groups",
                    "drop --group-add; your containers already have all your groups",
                )
            )
    primary = _primary_gid(identity)
    return [str(gid) for gid in identity.gids if gid != primary]


def with_no_new_privileges(options: list[str] | None) -> list[str]:
    """``SecurityOpt`` with ``no-new-privileges`` on: setuid files in the image give nothing."""
    # Any spelling of it (":false" included) is replaced by the one that turns it on.
    kept = [o for o in options or [] if not o.startswith(NO_NEW_PRIVILEGES)]
    return [*kept, NO_NEW_PRIVILEGES]
