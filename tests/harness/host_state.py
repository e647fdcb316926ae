"""A snapshot of the host state the test suite may touch, to prove a run leaves none behind.

``python -m tests.harness.host_state`` prints it as JSON; run it before and after ``make test``
and diff the two. ``tests/integration/test_host_cleanup.py`` does the same around a subset.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

from tests.harness.host_ledger import LEDGER, cgroup_hierarchies

REPO = Path(__file__).resolve().parents[2]
PLUGIN_SPEC_DIR = Path("/etc/docker/plugins")


def _entries(path: str) -> list[str]:
    try:
        return sorted(Path(path).read_text().splitlines())
    except OSError:
        return []


def _cgroups() -> list[str]:
    """DS01-named cgroups to depth 3 (``find /sys/fs/cgroup -maxdepth 3 -name 'ds01*'``)."""
    found = []
    for point in cgroup_hierarchies():
        for path in point.glob("ds01*"):
            found.append(os.fspath(path))
            found += [os.fspath(p) for p in path.glob("*/") if p.name.startswith("ds01")]
        found += [os.fspath(p) for p in point.glob("*/ds01*") if p.is_dir()]
    return sorted(set(found))


def _ls(path: Path, prefix: str = "") -> list[str]:
    try:
        return sorted(p.name for p in path.iterdir() if p.name.startswith(prefix))
    except OSError:
        return []


def snapshot() -> dict[str, list[str]]:
    """What a run could leave: users, groups, ds01 cgroups, modes, /tmp/ds01*, specs, ledger."""
    return {
        "users": _entries("/etc/passwd"),
        "groups": _entries("/etc/group"),
        "cgroups": _cgroups(),
        "modes": [f"{p} {stat.filemode(p.stat().st_mode)}" for p in [REPO, *REPO.parents]],
        "tmp": _ls(Path("/tmp"), "ds01"),
        "plugin_specs": _ls(PLUGIN_SPEC_DIR),
        "srv_etc_probes": _ls(Path("/srv"), "ds01") + _ls(Path("/etc"), "ds01-"),
        "ledger": [os.fspath(LEDGER)] if LEDGER.exists() else [],
    }


def diff(before: dict[str, list[str]], after: dict[str, list[str]]) -> dict[str, list[str]]:
    """Per key, ``+item`` for what appeared and ``-item`` for what went; empty keys omitted."""
    out = {}
    for key in before.keys() | after.keys():
        old, new = set(before.get(key, [])), set(after.get(key, []))
        changes = [f"+{x}" for x in sorted(new - old)] + [f"-{x}" for x in sorted(old - new)]
        if changes:
            out[key] = changes
    return out


if __name__ == "__main__":
    json.dump(snapshot(), sys.stdout, indent=1)
    sys.stdout.write("\n")
