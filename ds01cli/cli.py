"""``ds01``: the command line for users (what am I allowed, why was I refused) and admins.

Exit codes: 0 ok, 1 failure, 2 misuse.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from ds01d import unix_http
from ds01d.identities import identity_for_uid
from formats.units import format_duration, format_size
from policy.identity import Identity
from policy.limits import BUILTIN_DEFAULTS, DURATION_KEYS, SIZE_KEYS, resolve
from policy.loader import PolicyDocument, PolicyError, default_policy_text, parse_policy

DEFAULT_POLICY = "/etc/ds01/policy.yaml"


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
    if key in SIZE_KEYS:
        return format_size(value)
    if key in DURATION_KEYS:
        return format_duration(value)
    if key == "aggregate":
        parts = [
            f"cpus={value.get('cpus') or 'unlimited'}",
            f"memory={format_size(value.get('memory'))}",
            f"pids={value.get('pids') or 'unlimited'}",
        ]
        return " ".join(parts)
    if value is None:
        return "unlimited"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    return str(value)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    return "\n".join(lines)


def identity_for_name(name: str) -> Identity:
    import pwd

    try:
        return identity_for_uid(pwd.getpwnam(name).pw_uid)
    except KeyError:
        return Identity(uid=None, user=name)


def _daemon_profiles() -> set[str] | None:
    """The MIG profiles of the running ds01d's inventory, or None where it cannot be asked."""
    try:
        devices = api("GET", "gpus")["devices"]
    except (Failure, KeyError, TypeError):
        return None
    return {d["profile"] for d in devices if d.get("kind") == "mig"}


def cmd_policy_validate(args: argparse.Namespace) -> int:
    from ds01cli.policy_check import validate

    return validate(args.file, args.json, args.inventory, _daemon_profiles)


def cmd_policy_explain(args: argparse.Namespace) -> int:
    """The limits ds01d applies to a user now; from a policy file only when --file is given."""
    if args.file is None:
        if args.groups:
            raise Misuse("--groups needs --file: ds01d looks the user's groups up itself")
        data = api("GET", f"explain/{args.user}")
        where = f"ds01d, policy {data['policy']}"
    else:
        doc = _load(args.file)
        identity = identity_for_name(args.user)
        if args.groups:
            identity = Identity(
                identity.uid, identity.user, frozenset(args.groups.split(",")), identity.home
            )
        limits = resolve(doc, identity)
        data = {
            "user": limits.user,
            "group": limits.group,
            "known": limits.known,
            "values": limits.as_dict(),
            "sources": limits.sources,
            "refused": _refusal(limits),
            "policy": doc.source,
        }
        where = f"{doc.source} (a file: ds01d may enforce another)"
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    if data["refused"]:
        print(f"{data['user']} is refused by {where}:\n  {data['refused']['message']}")
        return 0
    print(
        f"{data['user']}: effective limits under {where}"
        f" (group: {data['group']}{'' if data['known'] else ', not named in the policy'})"
    )
    rows = [
        [key, show_value(key, data["values"][key]), data["sources"].get(key, "built-in")]
        for key in BUILTIN_DEFAULTS
    ]
    print(table(rows, ["KEY", "VALUE", "FROM"]))
    return 0


def _refusal(limits: Any) -> dict[str, str] | None:
    """The refusal every request of this user meets, as the engine words it (or None)."""
    from policy.engine import decide
    from policy.state import Request, State

    identity = Identity(uid=None, user=limits.user)
    verdict = decide(Request("GET", "/containers/json"), identity, limits, State())
    if verdict.code != "unknown_user":
        return None
    return {"code": verdict.code, "message": verdict.message}


# ---- talking to ds01d through the gateway ------------------------------------------------


def gateway_socket() -> str:
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        return host[len("unix://") :]
    return os.environ.get("DS01_SOCKET", "/var/run/docker.sock")


def api(method: str, path: str) -> Any:
    """Call ds01d's /ds01/v1 API; it knows who we are from the socket."""
    sock = gateway_socket()
    try:
        resp = unix_http.request(sock, method, "/ds01/v1/" + path)
    except OSError as exc:
        raise Failure(
            f"cannot reach ds01d at {sock} ({exc.strerror or exc}). "
            "To fix: check that ds01d runs (ds01 doctor), or set DOCKER_HOST"
        ) from None
    try:
        body = json.loads(resp.body)
    except ValueError:
        raise Failure(
            f"{sock} did not answer like ds01d (is the gateway in front of dockerd?). "
            "To fix: run ds01 doctor"
        ) from None
    if resp.status >= 400:
        message = body.get("message", "") if isinstance(body, dict) else str(body)
        if resp.status == 404 and "page not found" in message:
            raise Failure(
                f"{sock} is dockerd itself, not the DS01 gateway. To fix: run ds01 doctor"
            )
        raise Failure(message.removeprefix("ds01: "))
    return body


def _emit(args: argparse.Namespace, data: Any, render: Any) -> int:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
    else:
        print(render(data))
    return 0


def _colour(text: str, code: str) -> str:
    return (
        f"\033[{code}m{text}\033[0m"
        if sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        else text
    )


def _ago(epoch: float | None, now: float | None = None) -> str:
    if not epoch:
        return "-"
    return format_duration(max(0.0, (now or time.time()) - epoch))


# --no-trunc: full container IDs and device UUIDs everywhere (set once per command by main).
_FULL_IDS = False


def _short(value: str | None) -> str:
    return (value or "-") if _FULL_IDS else (value or "-")[:12]


def _projects() -> dict[str, str]:
    from ds01cli.first_day import container_projects

    return container_projects(gateway_socket())


def cmd_limits(args: argparse.Namespace) -> int:
    data = api("GET", "limits")

    def render(d: dict[str, Any]) -> str:
        v, src, use = d["limits"], d["sources"], d["usage"]
        who = f"{d['user']} (group {d['group']}{', admin' if d['admin'] else ''})"
        rows = [
            [
                "containers",
                f"{use['containers']} ({use['running']} running)",
                show_value("max_containers", v["max_containers"]),
                src["max_containers"],
            ],
            [
                "whole GPUs",
                str(use["whole_gpus"]),
                show_value("max_gpus", v["max_gpus"]),
                src["max_gpus"],
            ],
            [
                "MIG instances",
                str(use["mig_instances"]),
                show_value("max_mig_instances", v["max_mig_instances"]),
                src["max_mig_instances"],
            ],
            [
                "GPU-equivalents",
                f"{use['gpu_equivalents']:.2f}",
                show_value("max_gpu_equivalents", v["max_gpu_equivalents"]),
                src["max_gpu_equivalents"],
            ],
        ]
        for key in (
            "max_cpus",
            "memory",
            "shm_size",
            "pids_limit",
            "aggregate",
            "idle_timeout",
            "max_runtime",
            "gpu_hold_after_stop",
            "container_hold_after_stop",
            "bind_mounts",
            "allow",
        ):
            rows.append([key, "", show_value(key, v[key]), src.get(key, "built-in")])
        out = [f"Limits for {who}", table(rows, ["WHAT", "IN USE", "LIMIT", "FROM"])]
        names = _projects() if use["allocations"] else {}
        for alloc in use["allocations"]:
            devs = ", ".join(x["label"] for x in alloc["devices"])
            project = names.get(alloc["container"] or "")
            out.append(
                f"  holding {devs} in container {_short(alloc['container'])}"
                f"{f' (project {project})' if project else ''} "
                f"({alloc['state']}, for {_ago(alloc['since'])})"
            )
        for row in d.get("lifecycle", []):
            if row.get("stop_at"):
                left = format_duration(max(0, row["stop_at"] - time.time()))
                out.append(
                    f"  {row['name']}: idle {format_duration(row.get('idle_seconds') or 0)}, "
                    f"stops in {left} ({row.get('stop_reason')})"
                )
        for q in d["queue"]:
            out.append(_colour(f"  {_queue_line(q)}", "33"))
        return "\n".join(out)

    return _emit(args, data, render)


def _queue_line(q: dict[str, Any]) -> str:
    """``waiting for 1 GPU: place 2 in the GPU queue, 1m30s of at most 15m``."""
    line = f"waiting for {q['request']}: place {q['position']} in the GPU queue"
    since, deadline = q.get("waiting_since"), q.get("deadline")
    if since is not None:
        line += f", {format_duration(max(0, time.time() - since))}"
        if deadline is not None:
            line += f" of at most {format_duration(max(0, deadline - since))}"
    return line


def cmd_ps(args: argparse.Namespace) -> int:
    data = api("GET", "containers" + ("?all=1" if args.all else ""))
    names = _projects()
    for c in data["containers"]:
        c["project"] = names.get(c["id"], "")

    def render(d: dict[str, Any]) -> str:
        rows = []
        for c in d["containers"]:
            life = c.get("lifecycle") or {}
            stop = life.get("stop_at")
            when = (
                f"{format_duration(max(0, stop - time.time()))} ({life.get('stop_reason')})"
                if stop
                else "-"
            )
            rows.append(
                [
                    _short(c["id"]),
                    c["name"],
                    c["project"] or "-",
                    c["user"] or "-",
                    c["state"],
                    ", ".join(x if _FULL_IDS else x[:16] for x in c["devices"]) or "-",
                    format_duration(life["idle_seconds"])
                    if life.get("idle_seconds") is not None
                    else "-",
                    format_duration(life["runtime_seconds"])
                    if life.get("runtime_seconds") is not None
                    else "-",
                    when,
                ]
            )
        if not rows:
            return "no containers"
        return table(
            rows,
            [
                "CONTAINER",
                "NAME",
                "PROJECT",
                "USER",
                "STATE",
                "GPUS",
                "IDLE",
                "RUNTIME",
                "STOPS IN",
            ],
        )

    return _emit(args, data, render)


def cmd_gpus(args: argparse.Namespace) -> int:
    data = api("GET", "gpus")

    def render(d: dict[str, Any]) -> str:
        rows = []
        for dev in d["devices"]:
            state = dev["state"]
            shown = _colour(state, "32") if state == "free" else _colour(state, "33")
            where = f"GPU {dev['gpu_index']}" if dev.get("gpu_index") is not None else "?"
            rows.append(
                [
                    f"{where} MIG {dev['profile']}" if dev.get("kind") == "mig" else where,
                    dev["uuid"],
                    f"{dev['gpueq']:.2f}",
                    shown,
                    dev["user"] or "-",
                    _short(dev["container"]) if dev["container"] else "-",
                    _ago(dev["since"]) if dev["since"] else "-",
                ]
            )
        out = [
            table(rows, ["DEVICE", "UUID", "GPUEQ", "STATE", "USER", "CONTAINER", "FOR"])
            if rows
            else "no GPUs in the inventory"
        ]
        if d["queue"]:
            out.append("queue:")
            out += [
                f"  {q['position']}. {q['user']} (priority {q['priority']}): {q['request']}, "
                f"waiting {_ago(q['waiting_since'])}"
                for q in d["queue"]
            ]
        out += [_colour(f"problem: {p}", "31") for p in d["problems"]]
        out += [_colour(f"conflict: {c}", "31") for c in d.get("conflicts", [])]
        return "\n".join(out)

    return _emit(args, data, render)


def cmd_why(args: argparse.Namespace) -> int:
    data = api("GET", f"why/{args.container}")
    data["project"] = _projects().get(data["container"], "")

    def render(d: dict[str, Any]) -> str:
        project = f", project {d['project']}" if d["project"] else ""
        lines = [f"{d['name']} ({_short(d['container'])}{project}):"]
        for e in d["events"]:
            extra = "; ".join(e.get("changes") or [])
            lines.append(
                f"  {e['time']}  {e['event']:9s} {e.get('result', ''):5s} {e.get('reason') or ''} {extra}".rstrip()
            )
        if not d["events"]:
            lines.append("  no recorded decisions")
        return "\n".join(lines)

    return _emit(args, data, render)


def cmd_keepalive(args: argparse.Namespace) -> int:
    data = api("POST", f"keepalive/{args.container}")
    return _emit(args, data, lambda d: f"{_short(d['container'])} kept alive")


def cmd_slices(args: argparse.Namespace) -> int:
    data = api("GET", "slices")

    def render(d: dict[str, Any]) -> str:
        def used(value: Any, unit: str = "") -> str:
            return "-" if value is None else f"{value}{unit}"

        rows = []
        for row in d["slices"]:
            agg, use, kernel = row["aggregate"], row["usage"], row["kernel"]
            memory = "-" if use.get("memory") is None else show_value("memory", use["memory"])
            rows.append(
                [
                    row["user"],
                    row.get("group", "-"),
                    f"{memory} / {show_value('memory', agg.get('memory'))}",
                    f"{used(use.get('pids'))} / {agg.get('pids') or 'unlimited'}",
                    f"{used(use.get('cpu_seconds'), 's')} used, {agg.get('cpus') or 'unlimited'} cpus",
                    " ".join(f"{k}={v}" for k, v in kernel.items()),
                ]
            )
        return (
            table(rows, ["USER", "GROUP", "MEMORY", "TASKS", "CPU", "KERNEL"])
            if rows
            else "no user cgroups yet"
        )

    return _emit(args, data, render)


def cmd_users(args: argparse.Namespace) -> int:
    data = api("GET", "users")

    def render(d: dict[str, Any]) -> str:
        rows = [
            [
                u["user"],
                u["group"],
                f"{u['containers']}/{show_value('max_containers', u['max_containers'])}",
                str(u["running"]),
                f"{u['gpueq']:.2f}/{show_value('max_gpu_equivalents', u['max_gpu_equivalents'])}",
            ]
            for u in d["users"]
        ]
        return (
            table(rows, ["USER", "GROUP", "CONTAINERS", "RUNNING", "GPUEQ"]) if rows else "no users"
        )

    return _emit(args, data, render)


def cmd_status(args: argparse.Namespace) -> int:
    gpus = api("GET", "gpus")
    try:
        users = api("GET", "users")
    except Failure:  # not an admin: the device overview is still theirs to see
        users = None
    try:
        policy = api("GET", "policy")
    except Failure:  # a ds01d from before the policy call
        policy = None
    data = {"gpus": gpus, "users": users, "policy": policy}

    def render(d: dict[str, Any]) -> str:
        devs = d["gpus"]["devices"]
        free = sum(1 for x in devs if x["state"] == "free")
        out = [
            f"DS01: {len(devs)} devices, {free} free, {len(devs) - free} in use; "
            f"{len(d['gpus']['queue'])} waiting in the queue"
        ]
        rejected = reload_rejected(d["policy"])
        if rejected:
            out.append(_colour(rejected, "31"))
        held = [x for x in devs if x["state"] != "free"]
        if held:
            out.append(
                table(
                    [
                        [
                            x["label"],
                            x["state"],
                            x["user"] or "-",
                            _short(x["container"]),
                            _ago(x["since"]),
                        ]
                        for x in held
                    ],
                    ["DEVICE", "STATE", "USER", "CONTAINER", "FOR"],
                )
            )
        if d["users"] is None:
            out.append("your own limits and containers: ds01 limits, ds01 ps")
            return "\n".join(out)
        near = []
        for u in d["users"]["users"]:
            cap = u["max_gpu_equivalents"]
            if cap and u["gpueq"] >= 0.8 * cap:
                near.append(f"  {u['user']}: {u['gpueq']:.2f} of {cap} GPU-equivalents")
            if u["max_containers"] and u["containers"] >= 0.8 * u["max_containers"]:
                near.append(f"  {u['user']}: {u['containers']} of {u['max_containers']} containers")
        out.append("users near their limits:" if near else "no user near a limit")
        out += near
        out += [
            _colour(f"problem: {p}", "31")
            for p in d["gpus"]["problems"] + d["gpus"].get("conflicts", [])
        ]
        return "\n".join(out)

    return _emit(args, data, render)


def reload_rejected(policy: dict[str, Any] | None) -> str | None:
    """What ``ds01 status`` says while ds01d keeps an old policy after a rejected reload."""
    if not policy or not policy.get("rejected"):
        return None
    source, rejected = policy["source"], policy["rejected"]
    if policy.get("admin") is False:  # the error is the admins' to read and fix
        return (
            f"problem: the policy reload was rejected {_ago(rejected['at'])} ago; ds01d still "
            "enforces the previous policy. To fix: tell an admin of this server"
        )
    return (
        f"problem: the policy reload was rejected {_ago(rejected['at'])} ago; ds01d still "
        f"enforces the previous policy (sha256 {policy['sha256'][:12]}): {rejected['error']}. "
        f"To fix: correct {source} (ds01 policy validate {source}); ds01d loads it once it is "
        "valid (on change, or: systemctl reload ds01d)"
    )


def cmd_events(args: argparse.Namespace) -> int:
    since = None
    while True:
        data = api("GET", f"events?n={args.n}" + (f"&since={since}" if since else ""))
        for e in data["events"]:
            print(
                json.dumps(e)
                if args.json
                else f"{e['time']}  {e['event']:9s} {e.get('user') or '-':10s} {e.get('result', ''):5s} "
                f"{e.get('endpoint') or ''} {e.get('reason') or ''}".rstrip()
            )
            since = e["time"]
        if not args.follow:
            return 0
        sys.stdout.flush()
        time.sleep(1.0)


def unix_group_members(names: set[str]) -> set[str]:
    """Every user in these Unix groups (NSS): listed members, and those whose primary it is."""
    import grp
    import pwd

    users: set[str] = set()
    gids = set()
    for name in names:
        try:
            entry = grp.getgrnam(name)
        except KeyError:
            continue
        users.update(entry.gr_mem)
        gids.add(entry.gr_gid)
    users.update(p.pw_name for p in pwd.getpwall() if p.pw_gid in gids)
    return users


def cmd_policy_diff(args: argparse.Namespace) -> int:
    """Effective limits that change, for every user either policy names, by name or by Unix
    group, each resolved with their Unix groups exactly as ds01d does."""
    old, new = _load(args.old), _load(args.new)
    users = set(args.user or [])
    unix_groups: set[str] = set()
    for doc in (old, new):
        for group in (doc.data.get("groups") or {}).values():
            users.update(group.get("members") or [])
            unix_groups.update(group.get("unix_groups") or [])
        users.update((doc.data.get("users") or {}).keys())
    users |= unix_group_members(unix_groups)
    rows = []
    for user in sorted(users):
        identity = identity_for_name(user)
        before, after = resolve(old, identity), resolve(new, identity)
        group = before.group
        if before.group != after.group:
            group = f"{before.group} -> {after.group}"
        a, b = before.as_dict(), after.as_dict()
        for key in BUILTIN_DEFAULTS:
            if a[key] != b[key]:
                rows.append(
                    [
                        user,
                        group,
                        key,
                        show_value(key, a[key]),
                        show_value(key, b[key]),
                    ]
                )
    print(
        table(rows, ["USER", "GROUP", "KEY", "OLD", "NEW"])
        if rows
        else "no effective limit changes"
    )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Convert the original DS01's resource-limits.yaml (with the groups/*.members and
    user-overrides.yaml files beside it, as the original keeps them)."""
    import glob

    import yaml

    from ds01cli.import_ds01 import convert, parse_members

    folder = os.path.dirname(os.path.abspath(args.file))
    try:
        with open(args.file, encoding="utf-8") as f:
            original = yaml.safe_load(f) or {}
        members = {}
        for path in sorted(glob.glob(os.path.join(folder, "groups", "*.members"))):
            with open(path, encoding="utf-8") as f:
                members[os.path.basename(path)[: -len(".members")]] = parse_members(f.read())
        overrides = None
        overrides_path = os.path.join(folder, "user-overrides.yaml")
        if os.path.exists(overrides_path):
            with open(overrides_path, encoding="utf-8") as f:
                overrides = yaml.safe_load(f) or {}
        policy, unmapped = convert(original, members=members or None, user_overrides=overrides)
    except (OSError, yaml.YAMLError, ValueError) as exc:
        raise Failure(
            f"cannot convert {args.file}: {exc}. To fix: pass the original "
            "config/runtime/resource-limits.yaml"
        ) from None
    text = yaml.safe_dump(policy, sort_keys=False)
    parse_policy(text, args.output or "converted policy")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {args.output}")
    else:
        print(text, end="")
    for item in unmapped:
        print(f"not mapped: {item}", file=sys.stderr)
    return 0


DEVCONTAINER = {
    "name": "{name}",
    "image": "{image}",
    "runArgs": ["--gpus", "1"],
    "hostRequirements": {"gpu": "optional"},  # DS01 gives the GPU through --gpus in runArgs
    "workspaceMount": "source=${localWorkspaceFolder},target=/workspaces/${localWorkspaceFolderBasename},type=bind",
    "workspaceFolder": "/workspaces/${localWorkspaceFolderBasename}",
}


def cmd_init(args: argparse.Namespace) -> int:
    folder = os.path.abspath(args.folder)
    target = os.path.join(folder, ".devcontainer", "devcontainer.json")
    if os.path.exists(target) and not args.force:
        raise Failure(f"{target} exists. To fix: pass --force to overwrite it")
    config = dict(DEVCONTAINER, name=os.path.basename(folder), image=args.image)
    if not args.gpu:
        config.pop("hostRequirements")
        config["runArgs"] = []
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    print(f"wrote {target}: open the folder in VS Code and choose 'Reopen in Container'")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from ds01cli.doctor import doctor

    return doctor(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ds01", description="DS01: GPU governance for shared Docker servers"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: Any, help: str, json_flag: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        if json_flag:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)
        return p

    command("limits", cmd_limits, "your limits, what you use now, and your place in the GPU queue")
    command(
        "ps", cmd_ps, "your containers with GPUs, idle time, runtime and when they stop"
    ).add_argument("--all", "-a", action="store_true", help="everyone's (admins)")
    command("why", cmd_why, "the decisions DS01 made about one of your containers").add_argument(
        "container"
    )
    command(
        "keepalive", cmd_keepalive, "count a container as active now (resets its idle time)"
    ).add_argument("container")
    command("gpus", cmd_gpus, "every GPU and MIG device, who holds it since when, and the queue")
    command("users", cmd_users, "every user's containers and GPU use (admins)")
    command(
        "slices", cmd_slices, "each user's aggregate CPU, memory and task limits and current use"
    )
    command(
        "status",
        cmd_status,
        "one-screen overview: devices, holders, queue, users near limits (admins)",
    )
    events = command("events", cmd_events, "the audit log (admins)")
    events.add_argument("--follow", "-f", action="store_true")
    events.add_argument("-n", type=int, default=50, help="how many past events")
    pol = sub.add_parser("policy", help="validate, explain and compare policies").add_subparsers(
        dest="policy_cmd", required=True
    )
    validate = pol.add_parser(
        "validate",
        help="check a policy file: every error as file:line key: reason (exit 1), and "
        "warnings for users, Unix groups and MIG profiles this host does not have (exit 0)",
    )
    validate.add_argument("file")
    validate.add_argument(
        "--inventory",
        help="check MIG profiles against this inventory file (default: ask the running ds01d)",
    )
    validate.add_argument("--json", action="store_true", help="machine-readable output")
    validate.set_defaults(func=cmd_policy_validate)
    explain = pol.add_parser(
        "explain",
        help="the limits the running ds01d applies to a user, and where each comes from",
    )
    explain.add_argument("user")
    explain.add_argument(
        "--file",
        "--policy",
        dest="file",
        help="read this policy file instead of asking ds01d (what it would give)",
    )
    explain.add_argument(
        "--groups", help="with --file: comma-separated Unix groups to assume for the user"
    )
    explain.add_argument("--json", action="store_true")
    explain.set_defaults(func=cmd_policy_explain)
    diff = pol.add_parser("diff", help="effective limits that change between two policy files")
    diff.add_argument("old")
    diff.add_argument("new")
    diff.add_argument("--user", action="append", help="also compare this user (repeatable)")
    diff.set_defaults(func=cmd_policy_diff)
    imp = command(
        "import-ds01", cmd_import, "convert the original DS01 resource-limits.yaml", json_flag=False
    )
    imp.add_argument("file")
    imp.add_argument("-o", "--output", help="write the policy here (default: print it)")
    init = command(
        "init", cmd_init, "write .devcontainer/devcontainer.json asking for a GPU", json_flag=False
    )
    init.add_argument("folder", nargs="?", default=".", help="the folder (default: here)")
    init.add_argument(
        "--image",
        default="nvidia/cuda:12.4.1-runtime-ubuntu22.04",
        help="the image the Dev Container runs (default %(default)s)",
    )
    init.add_argument("--no-gpu", dest="gpu", action="store_false", help="ask for no GPU")
    init.add_argument(
        "--force", action="store_true", help="overwrite an existing devcontainer.json"
    )
    doctor = command("doctor", cmd_doctor, "check this server's DS01 deployment", json_flag=False)
    doctor.add_argument("rest", nargs=argparse.REMAINDER)
    from ds01cli import first_day

    for name in ("ps", "gpus", "limits", "status", "why"):
        sub.choices[name].add_argument(
            "--no-trunc", action="store_true", help="full container IDs and device UUIDs"
        )
    first_day.add_commands(sub, api, show_value, Failure)
    return first_day.finish(parser)


def main(argv: list[str] | None = None) -> int:
    from ds01cli import first_day

    argv = first_day.rewrite(sys.argv[1:] if argv is None else argv)
    bare = first_day.before_parse(argv)
    if bare is not None:  # bare ds01: a short overview, not an argparse error
        print(bare[1])
        return bare[0]
    if argv[:1] == ["doctor"]:  # its own options (socket paths) go to doctor's parser
        from ds01cli.doctor import doctor

        return doctor(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code not in (0, None) else 0
    global _FULL_IDS
    _FULL_IDS = bool(getattr(args, "no_trunc", False))
    try:
        return int(args.func(args))
    except (PolicyError, Failure) as exc:
        print(f"ds01: {exc}", file=sys.stderr)
        return 1
    except Misuse as exc:
        print(f"ds01: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
