"""Which host paths a user may bind-mount: their allowed prefixes, never a socket."""

from __future__ import annotations

import posixpath

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
