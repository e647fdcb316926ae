"""Which host paths a user may bind-mount: their allowed prefixes, never a socket."""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping
from typing import Any

from .decision import Denied, deny
from .identity import Identity
from .limits import Limits
from .state import State


def allowed_prefixes(identity: Identity, limits: Limits) -> list[str]:
    """The user's ``bind_mounts`` with ``{user}`` and ``{home}`` expanded."""
    home = identity.home or f"/home/{identity.user}"
    out = []
    for prefix in limits.bind_mounts:
        expanded = prefix.replace("{home}", home).replace("{user}", identity.user)
        out.append(posixpath.normpath(expanded))
    return out


def _within(path: str, prefix: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix.rstrip("/") + "/")


def bind_problem(source: str, identity: Identity, limits: Limits, state: State) -> str | None:
    """Why ``source`` may not be bind-mounted, or None if it may."""
    if not source.startswith("/"):
        return f"bind source {source!r} is not an absolute host path"
    resolved = state.realpath(posixpath.normpath(source))
    shown = source if resolved == source else f"{source} (resolves to {resolved})"
    for protected in state.protected_paths:
        real_protected = state.realpath(protected)
        for candidate in {protected, real_protected}:
            # the socket itself, a folder holding it, or anything inside a socket folder
            if _within(candidate, resolved) or _within(resolved, candidate):
                return f"mounting {shown} would expose the Docker/DS01 socket {protected}"
    if limits.is_admin:
        return None
    prefixes = allowed_prefixes(identity, limits)
    for prefix in prefixes:
        if _within(resolved, state.realpath(prefix)):
            return None
    allowed = ", ".join(prefixes) or "nothing"
    return f"bind mount of {shown} is outside the paths you may mount ({allowed})"


# Bind options that change the host side: SELinux relabelling rewrites the host files' labels.
_HOST_CHANGING_OPTIONS = {"z", "Z"}
_FIX_BIND = "mount a folder under your home directory instead"


def host_bind_sources(host: Mapping[str, Any]) -> list[str]:
    """The host paths a HostConfig bind-mounts (``Binds`` and ``Mounts`` of type bind)."""
    sources = []
    for bind in host.get("Binds") or []:
        source = bind.split(":", 1)[0]
        if source.startswith("/"):
            sources.append(source)
    for mount in host.get("Mounts") or []:
        if (mount or {}).get("Type") == "bind":
            sources.append(mount.get("Source") or "")
    return sources


def container_bind_sources(details: Mapping[str, Any]) -> list[str]:
    """Every host path an existing container mounts: its own binds and, from ``docker
    inspect``'s top-level ``Mounts``, the binds it inherits through ``--volumes-from``."""
    sources = host_bind_sources(details.get("HostConfig") or {})
    for mount in details.get("Mounts") or []:
        if (mount or {}).get("Type") == "bind" and mount.get("Source"):
            sources.append(mount["Source"])
    return list(dict.fromkeys(sources))


def pin_bind(source: str, identity: Identity, limits: Limits, state: State) -> str:
    """The path to mount instead of ``source``: its resolved form, once it passed every check.

    A missing source is refused rather than left to dockerd, which would create it as root in
    the user's own folder. Pinning to the resolved path means a later symlink planted in the
    middle of it is seen at start (:func:`start_problem`), not followed.
    """
    problem = bind_problem(source, identity, limits, state)
    if problem:
        raise Denied(deny("bind_mount", problem, _FIX_BIND))
    resolved = state.realpath(posixpath.normpath(source))
    if not state.exists(resolved):
        raise Denied(
            deny(
                "bind_missing",
                f"bind source {source} does not exist (dockerd would create it as root)",
                f"create it first: mkdir -p {source}",
            )
        )
    return resolved


def check_bind_options(options: Iterable[str], limits: Limits) -> None:
    changing = sorted(set(options) & _HOST_CHANGING_OPTIONS)
    if changing and not limits.is_admin:
        raise Denied(
            deny(
                "bind_relabel",
                f"the bind option :{changing[0]} relabels host files, which is not allowed",
                f"drop :{changing[0]}",
            )
        )


def start_problem(
    details: Mapping[str, Any], identity: Identity, limits: Limits, state: State
) -> str | None:
    """Why a container may not start now because of its bind mounts, or None.

    runc resolves a bind source when the container starts, not when it was created, so each
    start re-checks that every source still resolves to itself (nothing on its way was
    replaced by a symlink since create), still exists and is still one the user may mount.
    """
    for source in container_bind_sources(details):
        normal = posixpath.normpath(source) if source else source
        resolved = state.realpath(normal) if normal else normal
        if resolved != normal:
            return (
                f"bind source {source} now resolves to {resolved}: something on its path was "
                "replaced by a symlink since the container was created"
            )
        if not state.exists(resolved):
            return f"bind source {source} no longer exists"
        problem = bind_problem(source, identity, limits, state)
        if problem:
            return problem
    return None
