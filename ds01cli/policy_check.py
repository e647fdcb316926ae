"""``ds01 policy validate``: every error of a policy file, and warnings about names the host
does not know (Unix groups, users, MIG profiles of the inventory), as text or JSON.

Errors make the policy unusable (exit 1). Warnings leave it valid (exit 0), but each one
silently locks someone out: a misspelt group maps nobody, a misspelt profile is never free.
"""

from __future__ import annotations

import difflib
import grp
import json
import pwd
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import yaml

from allocator.inventory import InventoryError, load_inventory_file
from policy.host_checks import Finding, policy_findings
from policy.loader import PolicyError, _line_of, check_policy

# What the daemon's inventory holds, when no --inventory is given: MIG profiles, or None
# where ds01d cannot be asked (the warning about profiles is then left out, with a note).
DaemonProfiles = Callable[[], set[str] | None]


@dataclass(frozen=True)
class Problem:
    """One line of the report: ``file:line key: reason``."""

    file: str
    line: int | None
    key: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where} {self.key}: {self.reason}" if self.key else f"{where}: {self.reason}"


def _exists(lookup: Callable[[str], Any], name: str) -> bool:
    try:
        lookup(name)
    except (KeyError, ValueError):
        return False
    return True


def user_exists(name: str) -> bool:
    return _exists(pwd.getpwnam, name)


def group_exists(name: str) -> bool:
    return _exists(grp.getgrnam, name)


def _near(name: str, known: Iterable[str]) -> str:
    match = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""


def _limit_sections(data: dict[str, Any]) -> list[tuple[tuple[str | int, ...], dict[str, Any]]]:
    sections: list[tuple[tuple[str | int, ...], dict[str, Any]]] = [
        (("defaults",), data.get("defaults") or {})
    ]
    for kind in ("groups", "users"):
        sections += [((kind, name), body or {}) for name, body in (data.get(kind) or {}).items()]
    return sections


def name_findings(
    data: dict[str, Any],
    user_exists: Callable[[str], bool] = user_exists,
    group_exists: Callable[[str], bool] = group_exists,
    profiles: set[str] | None = None,
) -> list[Finding]:
    """Users, Unix groups and MIG profiles the policy names but the host does not have."""
    out = []
    for name, group in (data.get("groups") or {}).items():
        for i, member in enumerate((group or {}).get("members") or []):
            if not user_exists(member):
                out.append(_no_user(("groups", name, "members", i), member))
        for i, unix in enumerate((group or {}).get("unix_groups") or []):
            if not group_exists(unix):
                out.append(
                    Finding(
                        ("groups", name, "unix_groups", i),
                        f"there is no Unix group {unix} on this host, so it maps nobody",
                        "name an existing group (getent group) or create it (groupadd)",
                    )
                )
    for user in data.get("users") or {}:
        if not user_exists(user):
            out.append(_no_user(("users", user), user))
    for i, exemption in enumerate(data.get("exemptions") or []):
        if not user_exists(exemption.get("user", "")):
            out.append(_no_user(("exemptions", i, "user"), exemption.get("user", "")))
    if profiles is not None:
        for path, body in _limit_sections(data):
            for i, profile in enumerate(body.get("allowed_mig_profiles") or []):
                if profile not in profiles:
                    have = ", ".join(sorted(profiles)) or "none"
                    out.append(
                        Finding(
                            (*path, "allowed_mig_profiles", i),
                            f"no MIG instance of profile {profile} is in the inventory"
                            f"{_near(profile, profiles)}, so it can never be given",
                            f"use a profile the inventory has ({have})",
                        )
                    )
    return out


def _no_user(path: tuple[str | int, ...], user: str) -> Finding:
    return Finding(
        path,
        f"there is no user {user} on this host",
        "check the spelling (getent passwd), or ignore this if the account is still to come",
    )


def inventory_profiles(path: str) -> set[str]:
    """The MIG profiles of an inventory file."""
    inventory = load_inventory_file(path)
    return {d.profile for d in inventory.devices if d.is_mig}


def _problems(findings: list[Finding], root: yaml.Node | None, source: str) -> list[Problem]:
    return [
        Problem(source, _line_of(root, list(f.path)), f.key, f"{f.problem}. To fix: {f.fix}")
        for f in findings
    ]


def _as_problem(error: PolicyError) -> Problem:
    return Problem(error.source, error.line, error.path, error.reason)


def validate(
    path: str, as_json: bool, inventory: str | None, daemon_profiles: DaemonProfiles
) -> int:
    """The command: print every error and warning; exit 1 on errors, else 0."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        return _fail(f"cannot read {path}: {exc.strerror}. To fix: check the path", as_json)
    document, errors = check_policy(text, path)
    warnings: list[Problem] = []
    notes: list[str] = []
    if document is not None:
        try:
            profiles = inventory_profiles(inventory) if inventory else daemon_profiles()
        except InventoryError as exc:
            return _fail(f"{exc}. To fix: pass a valid inventory file", as_json)
        if profiles is None and _names_profiles(document.data):
            notes.append(
                "MIG profiles not checked: ds01d cannot be asked for its inventory. "
                "To fix: pass --inventory FILE"
            )
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        findings = policy_findings(document.data) + name_findings(document.data, profiles=profiles)
        warnings = sorted(_problems(findings, root, path), key=lambda p: (p.line or 0, p.key))
    problems = [_as_problem(e) for e in errors]
    if as_json:
        print(
            json.dumps(
                {
                    "file": path,
                    "valid": not problems,
                    "errors": [{**p.__dict__, "message": str(p)} for p in problems],
                    "warnings": [{**p.__dict__, "message": str(p)} for p in warnings],
                    "notes": notes,
                },
                indent=2,
            )
        )
        return 1 if problems else 0
    for problem in problems:
        print(f"ds01: {problem}", file=sys.stderr)
    if len(problems) > 1:
        print(f"ds01: {path}: {len(problems)} errors", file=sys.stderr)
    for warning in warnings:
        print(f"ds01: warning: {warning}", file=sys.stderr)
    for note in notes:
        print(f"ds01: note: {note}", file=sys.stderr)
    if problems:
        return 1
    count = len(warnings)
    print(f"{path}: valid" + (f" ({count} warning{'s' if count != 1 else ''})" if count else ""))
    return 0


def _names_profiles(data: dict[str, Any]) -> bool:
    return any(body.get("allowed_mig_profiles") for _, body in _limit_sections(data))


def _fail(message: str, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"valid": False, "errors": [{"message": message}], "warnings": []}))
    else:
        print(f"ds01: {message}", file=sys.stderr)
    return 1
