"""What the engine is given besides the identity and limits: the request and a state snapshot.

The I/O layer fills these in (looking up the objects a request names); the engine only reads.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # the raw request-target, e.g. "/v1.41/containers/create?name=x"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return None


@dataclass(frozen=True)
class ObjectFacts:
    """A Docker object as the engine needs to know it: who owns it and its relevant facts."""

    kind: str  # "container", "exec", "volume", "network"
    id: str
    owner: str | None  # the ds01.user label; None for objects created outside DS01
    name: str = ""
    running: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)


def _no_symlinks(path: str) -> str:
    return posixpath.normpath(path)


def _no_users(name: str) -> bool:
    return False


def _exists_unknown(path: str) -> bool:
    return True


@dataclass(frozen=True)
class State:
    now: float = 0.0
    target: ObjectFacts | None = None  # the object the route names (None: does not exist)
    # The target was not looked up: dockerd's answer to this read will describe it (see
    # engine.ANSWER_NAMES_TARGET), and the engine decides again once it has that answer.
    target_in_answer: bool = False
    related: Mapping[str, ObjectFacts] = field(default_factory=dict)  # objects the body names
    user_containers: int = 0  # containers the user already has (for max_containers)
    user_networks: int = 0  # networks the user already has (for max_networks)
    cgroup_driver: str = "cgroupfs"
    host_cpus: int | None = None  # dockerd refuses --cpus above the host's CPU count
    # Resolves symlinks on the host (os.path.realpath); injected so the engine stays pure.
    realpath: Callable[[str], str] = _no_symlinks
    # Whether a host path exists (os.path.exists), for bind sources dockerd would create.
    exists: Callable[[str], bool] = _exists_unknown
    # Whether a name is a Unix user of this host (NSS), for the ``<user>/...`` image namespace.
    is_user: Callable[[str], bool] = _no_users
    # Sockets no user may mount: dockerd's, the gateway's, the plugin's.
    protected_paths: tuple[str, ...] = (
        "/var/run/docker.sock",
        "/run/docker.sock",
        "/run/docker/plugins",
        "/run/ds01",
        "/var/run/ds01",
    )
