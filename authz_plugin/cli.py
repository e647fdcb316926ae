"""``ds01``: the command line for users (what am I allowed, why was I refused) and admins.

Exit codes: 0 ok, 1 failure, 2 misuse.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from policy.identity import Identity
from policy.limits import BUILTIN_DEFAULTS, resolve
from policy.loader import PolicyDocument, PolicyError, default_policy_text, parse_policy
from policy.units import format_duration, format_size

from .identities import identity_for_uid

DEFAULT_POLICY = "/etc/ds01/policy.yaml"
_SIZES = {"memory", "shm_size"}
_DURATIONS = {"idle_timeout", "max_runtime", "gpu_hold_after_stop", "container_hold_after_stop", "gpu_wait"}


class Misuse(Exception):
    """The command was called wrongly (exit 2)."""


class Failure(Exception):
    """The command could not do its job (exit 1); the message says what to do."""


def _load(path: str | None) -> PolicyDocument:
    if path is None:
        path = DEFAULT_POLICY if os.path.exists(DEFAULT_POLICY) else None
    if path is None:
        return parse_policy(default_policy_text(), "built-in default policy")
    try:
        with open(path, encoding="utf-8") as f:
            return parse_policy(f.read(), path)
    except OSError as exc:
        raise Failure(f"cannot read {path}: {exc.strerror}. To fix: check the path") from None


def show_value(key: str, value: Any) -> str:
    if key in _SIZES:
        return format_size(value)
    if key in _DURATIONS:
        return format_duration(value)
    if key == "aggregate":
        parts = [f"cpus={value.get('cpus') or 'unlimited'}", f"memory={format_size(value.get('memory'))}",
                 f"pids={value.get('pids') or 'unlimited'}"]
        return " ".join(parts)
    if value is None:
        return "unlimited"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    return str(value)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def identity_for_name(name: str) -> Identity:
    import pwd

    try:
        return identity_for_uid(pwd.getpwnam(name).pw_uid)
    except KeyError:
        return Identity(uid=None, user=name)


def cmd_policy_validate(args: argparse.Namespace) -> int:
    try:
        with open(args.file, encoding="utf-8") as f:
            parse_policy(f.read(), args.file)
    except OSError as exc:
        raise Failure(f"cannot read {args.file}: {exc.strerror}") from None
    print(f"{args.file}: valid")
    return 0


def cmd_policy_explain(args: argparse.Namespace) -> int:
    doc = _load(args.policy)
    identity = identity_for_name(args.user)
    if args.groups:
        identity = Identity(identity.uid, identity.user, frozenset(args.groups.split(",")), identity.home)
    limits = resolve(doc, identity)
    if args.json:
        print(json.dumps({"user": limits.user, "group": limits.group, "known": limits.known,
                          "values": limits.values, "sources": limits.sources}, indent=2, default=str))
        return 0
    print(f"{limits.user}: effective limits under {doc.source}"
          f" (group: {limits.group}{'' if limits.known else ', not named in the policy'})")
    rows = [[key, show_value(key, limits.values[key]), limits.sources.get(key, "built-in")]
            for key in BUILTIN_DEFAULTS]
    print(table(rows, ["KEY", "VALUE", "FROM"]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ds01", description="DS01: GPU governance for shared Docker servers")
    sub = parser.add_subparsers(dest="command", required=True)
    pol = sub.add_parser("policy", help="validate and explain the policy").add_subparsers(dest="policy_cmd", required=True)
    validate = pol.add_parser("validate", help="check a policy file; exit 1 with file:line key: reason")
    validate.add_argument("file")
    validate.set_defaults(func=cmd_policy_validate)
    explain = pol.add_parser("explain", help="a user's effective limits and where each comes from")
    explain.add_argument("user")
    explain.add_argument("--policy", help=f"policy file (default {DEFAULT_POLICY} or the built-in)")
    explain.add_argument("--groups", help="comma-separated Unix groups to assume for the user")
    explain.add_argument("--json", action="store_true")
    explain.set_defaults(func=cmd_policy_explain)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code not in (0, None) else 0
    try:
        return int(args.func(args))
    except PolicyError as exc:
        print(f"ds01: {exc}", file=sys.stderr)
        return 1
    except Failure as exc:
        print(f"ds01: {exc}", file=sys.stderr)
        return 1
    except Misuse as exc:
        print(f"ds01: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
