"""The shared build cgroup, as data: dockerd's ``cgroup-parent`` and where BuildKit steps land.

dockerd 20.10 hands its own ``cgroup-parent`` (daemon.json) to BuildKit's runc executor, which
ignores the build's ``cgroupparent``/``memory``/``cpu*`` and puts every RUN step of every user
at one place below it (moby ``builder-next``; BuildKit's ``runcexecutor``):

- cgroupfs driver: ``<cgroup-parent>/buildkit/<id>``. DS01 sets ``cgroup-parent`` to
  ``/ds01-builds`` and caps ``/ds01-builds/buildkit``: only BuildKit lives there; containers
  created without a CgroupParent (admins', root's on the real socket) go to
  ``/ds01-builds/<id>``, beside it and outside the cap.
- systemd driver: ``<cgroup-parent>:docker:<id>``, a scope directly in the slice, with no
  ``buildkit`` level; so the cap is on the slice itself and parentless containers share it.

``ds01-builds`` sits beside ``/ds01`` (never a user's directory) and the slice is
``ds01_builds.slice`` rather than ``ds01-builds.slice``, which systemd would nest in
``ds01.slice`` and which is the name of a policy group called ``builds``.

Pure: names and unit text only; ``ds01d/host/cgroups.py`` does the I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .slices import slice_unit_text

BUILD_CGROUPFS_PARENT = "/ds01-builds"
BUILD_SLICE = "ds01_builds.slice"
# The level BuildKit's executor adds below dockerd's cgroup-parent (cgroupfs only).
BUILDKIT_DIR = "buildkit"


def dockerd_cgroup_parent(driver: str) -> str:
    """The ``cgroup-parent`` dockerd must run with so BuildKit lands in DS01's build cgroup."""
    return BUILD_SLICE if driver == "systemd" else BUILD_CGROUPFS_PARENT


def buildkit_cgroup(parent: str) -> str:
    """The cgroupfs directory (from the hierarchy root) holding every BuildKit step."""
    return f"/{parent.strip('/')}/{BUILDKIT_DIR}"


def build_slice_text(cap: Mapping[str, Any]) -> str:
    """The build slice's unit file (systemd driver): the cap as a user slice would hold it."""
    text = slice_unit_text("BuildKit builds", "", cap)
    return text.replace(
        "Description=DS01 containers of BuildKit builds",
        "Description=DS01: all BuildKit builds together (and containers without a parent)",
    )
