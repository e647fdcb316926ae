"""Host settings and policy shapes that weaken DS01's rule that root in a container is no power
on the host.

DS01 runs non-admin containers as the caller (``run_as: user``), so container root cannot write
a setuid file or a device node through a bind mount. These checks are the defence in depth
around that rule: the host mounts holding bind prefixes should be ``nosuid,nodev``, the kernel's
hard/symlink protections should be on, and a bind prefix should be per-user (``/data/{user}``,
not ``/data``). Pure: every input is recorded text or a plain value (``/proc/self/mountinfo``,
``/proc/sys/fs/*``, the policy as a dict), so ``ds01 doctor`` and ``ds01 policy validate`` read
the host and the file, and the tests feed recorded ones.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Any

# What `bind_mounts` is when the policy's defaults do not say (policy.limits.BUILTIN_DEFAULTS).
BUILTIN_BIND_MOUNTS = ("{home}",)
HARDENING = ("nosuid", "nodev")
LINK_SYSCTLS = ("fs.protected_hardlinks", "fs.protected_symlinks")
_LINK_RISK = {
    "fs.protected_hardlinks": "users may hard-link files they do not own, so a root-owned "
    "(setuid) file stays reachable through a link in their own folder after it is removed",
    "fs.protected_symlinks": "symlinks in world-writable sticky folders such as /tmp are "
    "followed whoever owns them, so a user's link can turn a root process's write elsewhere",
}
# Two made-up users: a prefix is per-user when it expands to disjoint folders for them.
_SAMPLES = (("ds01-sample-a", "/home/ds01-sample-a"), ("ds01-sample-b", "/home/ds01-sample-b"))


@dataclass(frozen=True)
class Finding:
    """One weakness: where it is (a policy key path, a mount point, a sysctl), what, the fix."""

    path: tuple[str | int, ...]
    problem: str
    fix: str

    @property
    def key(self) -> str:
        return ".".join(str(p) for p in self.path)


# ----------------------------------------------------------------------------- mounts


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo; ``options`` are the per-mount ones (nosuid, nodev)."""

    point: str
    options: frozenset[str]
    fstype: str
    source: str


_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash in paths as \040, \011, \012, \134.
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts in a /proc/PID/mountinfo text, in its order (later lines are mounted on top)."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue  # not a mountinfo line
        sep = fields.index("-", 6)
        if len(fields) < sep + 3:
            continue
        mounts.append(
            Mount(
                point=_unescape(fields[4]),
                options=frozenset(fields[5].split(",")),
                fstype=fields[sep + 1],
                source=_unescape(fields[sep + 2]),
            )
        )
    return mounts


def within(path: str, prefix: str) -> bool:
    """Whether ``path`` is ``prefix`` or lies below it."""
    return prefix == "/" or path == prefix or path.startswith(prefix.rstrip("/") + "/")


def mount_holding(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount a path lies on: the longest mount point above it, the topmost of equals."""
    best = None
    for mount in mounts:
        if within(path, mount.point) and (best is None or len(mount.point) >= len(best.point)):
            best = mount
    return best


def mounts_serving(base: str, mounts: list[Mount]) -> list[Mount]:
    """The mounts a folder's contents can lie on: the one holding it and every mount below it."""
    holding = mount_holding(base, mounts)
    below = [m for m in mounts if m.point != base and within(m.point, base)]
    seen: dict[str, Mount] = {}
    for mount in [holding, *below] if holding else below:
        top = mount_holding(mount.point, mounts)  # only the topmost mount at a point is reachable
        if top is not None:
            seen[top.point] = top
    return list(seen.values())


# ----------------------------------------------------------------------------- the policy


@dataclass(frozen=True)
class Grant:
    """One bind prefix as the policy writes it, and the section giving it."""

    path: tuple[str | int, ...]  # e.g. ("groups", "students", "bind_mounts", 0)
    prefix: str

    @property
    def section(self) -> str:
        return ".".join(str(p) for p in self.path[:2] if p != "bind_mounts")


def _sections(policy: dict[str, Any]) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    """(path, mapping) of defaults, each group and each user entry that is not an admin's."""
    out: list[tuple[tuple[str, ...], dict[str, Any]]] = []
    defaults = policy.get("defaults") or {}
    if isinstance(defaults, dict):
        out.append((("defaults",), defaults))
    for kind in ("groups", "users"):
        for name, entry in (policy.get(kind) or {}).items():
            if isinstance(entry, dict):
                out.append(((kind, str(name)), entry))
    # Admins mount any path anyway; their prefixes limit nothing.
    return [(path, entry) for path, entry in out if not entry.get("admin")]


def bind_grants(policy: dict[str, Any]) -> list[Grant]:
    """Every bind prefix a non-admin may be given; the built-in ``{home}`` when defaults say none."""
    grants = []
    for path, entry in _sections(policy):
        prefixes = entry.get("bind_mounts")
        if prefixes is None and path == ("defaults",):
            prefixes = list(BUILTIN_BIND_MOUNTS)
        for i, prefix in enumerate(prefixes or []):
            if isinstance(prefix, str):
                grants.append(Grant((*path, "bind_mounts", i), prefix))
    return grants


def expand(prefix: str, user: str, home: str) -> str:
    """A prefix for one user, as the engine expands it (policy.mounts.allowed_prefixes)."""
    return posixpath.normpath(prefix.replace("{home}", home).replace("{user}", user))


def _overlap(a: str, b: str) -> bool:
    return within(a, b) or within(b, a)


def is_per_user(prefix: str) -> bool:
    """Whether two different users get folders apart from each other (``/data/{user}``)."""
    (ua, ha), (ub, hb) = _SAMPLES
    return not _overlap(expand(prefix, ua, ha), expand(prefix, ub, hb))


def static_base(prefix: str, home_root: str = "/home") -> str:
    """The deepest folder every user's expansion of ``prefix`` lies in (``/data/{user}``: /data)."""
    text = prefix.replace("{home}", home_root.rstrip("/") + "/{user}")
    cut = text.find("{")
    if cut < 0:
        return posixpath.normpath(text)
    head = text[:cut]
    base = head if head.endswith("/") else posixpath.dirname(head)
    return posixpath.normpath(base or "/")


def _per_user_form(prefix: str) -> str:
    if "{" in prefix:
        return "/data/{user}"
    return prefix.rstrip("/") + "/{user}"


def shared_prefix_findings(policy: dict[str, Any]) -> list[Finding]:
    """Bind prefixes that give several users the same folder, and why per-user ones are safer."""
    grants = bind_grants(policy)
    findings = []
    for grant in grants:
        if grant.path[0] != "users":
            if not is_per_user(grant.prefix):
                findings.append(_shared(grant))
            continue
        other = _overlapping_grant(grant, grants)
        if other is not None:
            findings.append(_reaches_others(grant, other))
    return findings


def _shared(grant: Grant) -> Finding:
    return Finding(
        grant.path[:-1],
        f"{grant.prefix} is not per-user: every user {grant.section} gives it reaches the same "
        "folder, and their containers (which run as them) read and write each other's files "
        "there wherever file permissions allow it",
        f"a per-user prefix is safer: {_per_user_form(grant.prefix)}, each folder owned by its "
        "user",
    )


def _overlapping_grant(grant: Grant, grants: list[Grant]) -> Grant | None:
    # A users.NAME entry is that user's alone; it is shared when it holds another's folder
    # (the narrower grant is not the one to change).
    name = str(grant.path[1])
    mine = expand(grant.prefix, name, f"/home/{name}")
    for other in grants:
        if other.path[:2] == grant.path[:2]:
            continue
        if other.path[0] == "users":
            theirs = [expand(other.prefix, str(other.path[1]), f"/home/{other.path[1]}")]
        else:
            theirs = [expand(other.prefix, u, h) for u, h in _SAMPLES if u != name]
        if any(within(t, mine) for t in theirs):
            return other
    return None


def _reaches_others(grant: Grant, other: Grant) -> Finding:
    return Finding(
        grant.path[:-1],
        f"{grant.prefix} holds the folders {other.prefix} from {other.section} gives other "
        f"users: {grant.path[1]}'s containers read and write their files there wherever file "
        "permissions allow it",
        f"narrow it to {grant.path[1]}'s own folder, one that no other prefix covers",
    )


def _effective(
    policy: dict[str, Any], path: tuple[str, ...], entry: dict[str, Any], key: str
) -> Any:
    # A group or user entry overrides defaults, which override the built-in value.
    if key in entry:
        return entry[key]
    defaults = policy.get("defaults") or {}
    if path != ("defaults",) and isinstance(defaults, dict) and key in defaults:
        return defaults[key]
    return {"run_as": "user", "bind_mounts": list(BUILTIN_BIND_MOUNTS)}[key]


def root_with_binds_findings(policy: dict[str, Any]) -> list[Finding]:
    """Sections with ``run_as: root`` and bind prefixes: DS01 refuses that pair at create."""
    findings = []
    for path, entry in _sections(policy):
        if _effective(policy, path, entry, "run_as") != "root":
            continue
        prefixes = _effective(policy, path, entry, "bind_mounts") or []
        if not prefixes:
            continue
        inherited = "" if "bind_mounts" in entry else " (inherited from defaults)"
        findings.append(
            Finding(
                (*path, "run_as"),
                f"run_as: root together with bind_mounts {', '.join(map(str, prefixes))}"
                f"{inherited}: a container that runs as root may not bind-mount host folders, "
                "so DS01 refuses such a create anyway",
                "keep run_as: user (the default) to keep the bind mounts, or set "
                "bind_mounts: [] where containers must run as root",
            )
        )
    return findings


def policy_findings(policy: dict[str, Any]) -> list[Finding]:
    """Every policy-only warning (``ds01 policy validate`` prints them; they are not errors)."""
    return shared_prefix_findings(policy) + root_with_binds_findings(policy)


# ----------------------------------------------------------------------------- the host


def mount_findings(
    policy: dict[str, Any], mounts: list[Mount], home_root: str = "/home"
) -> list[Finding]:
    """Host mounts holding a bind prefix's folders without ``nosuid`` or ``nodev``."""
    findings: dict[tuple[str, str], Finding] = {}
    for grant in bind_grants(policy):
        base = static_base(grant.prefix, home_root)
        for mount in mounts_serving(base, mounts):
            missing = [o for o in HARDENING if o not in mount.options]
            if missing and (mount.point, base) not in findings:
                findings[(mount.point, base)] = _weak_mount(mount, base, missing, grant)
    return list(findings.values())


def _weak_mount(mount: Mount, base: str, missing: list[str], grant: Grant) -> Finding:
    lacks = " or ".join(missing)
    problem = (
        f"{mount.point} ({mount.fstype} {mount.source}) holds {base} ({grant.prefix} from "
        f"{grant.section}) and is mounted without {lacks}: a setuid file or device node left "
        "there works when run or opened from the host"
    )
    if within(mount.point, base):
        fix = (
            f"add nosuid,nodev to the options of {mount.point} in /etc/fstab, then: "
            f"mount -o remount,nosuid,nodev {mount.point}"
        )
    else:  # the mount also holds other things (the root filesystem): harden just this folder
        fix = (
            f"mount {base} on itself with nosuid,nodev: add `{base} {base} none "
            f"bind,nosuid,nodev 0 0` to /etc/fstab, then: mount --bind {base} {base} && "
            f"mount -o remount,bind,nosuid,nodev {base}"
        )
    return Finding((mount.point,), problem, fix)


def sysctl_findings(values: dict[str, str | None]) -> list[Finding]:
    """``fs.protected_hardlinks``/``fs.protected_symlinks`` that are off (``None``: unreadable)."""
    findings = []
    for name in LINK_SYSCTLS:
        value = values.get(name)
        if value is None:
            findings.append(
                Finding(
                    (name,),
                    f"{name} is unreadable (/proc/sys/{name.replace('.', '/')})",
                    "run on the host, where /proc/sys is mounted",
                )
            )
        elif value.strip() == "0":
            findings.append(
                Finding(
                    (name,),
                    f"{name} is 0: {_LINK_RISK[name]}",
                    f"sysctl -w {name}=1, and keep it across reboots: echo '{name} = 1' >> "
                    "/etc/sysctl.d/60-ds01.conf",
                )
            )
    return findings
