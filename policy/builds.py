"""``POST /build``: the build's query checked and rewritten so RUN steps stay in the user's box.

The legacy builder (``version`` absent or 1) runs every RUN step as a container whose
HostConfig comes from this query (cgroup parent, memory, CPU, shm, network, ulimits, extra
hosts). The rewrite pins those to the user: their cgroup parent, the policy's per-container
caps, and only networks they may use. BuildKit (``version=2``) reads the same query but
ignores the resource fields (its RUN steps run under dockerd's own cgroup parent, see the
README's "Builds"); its ``networkmode=host`` would grant the ``network.host`` entitlement,
so the same network rules apply to it.

Pure: the caller passes the route (query already parsed the way Go reads it) and the facts
of a named network; the approved query comes back canonical in ``Decision.query``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from formats.labels import LABEL_PREFIX, USER_SETTABLE_LABELS
from formats.units import format_size

from .create import who
from .decision import Decision, Denied, allow, deny
from .identity import Identity
from .images import check_tag_writes
from .limits import Limits
from .networks import BUILTIN_NETWORKS, network_ref_problem
from .routes import Route
from .slices import CPU_PERIOD_US, cgroup_parent
from .state import State

MIN_CPU_PERIOD, MAX_CPU_PERIOD = 1_000, 1_000_000
_INT64 = re.compile(r"^[+-]?[0-9]+$")
_CPUSET = re.compile(r"^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$")
# Parameters dockerd's build reads once (``FormValue``: the first value) and that carry no
# power over the host: forwarded as the first value, exactly as dockerd would read it.
_PASS_FIRST = (
    "dockerfile", "q", "nocache", "rm", "forcerm", "pull", "squash", "target", "remote",
    "platform", "buildargs", "cachefrom", "session", "buildid", "version",
)  # fmt: skip
# Everything else dockerd reads and DS01 decides on, in the order the canonical query has.
_GOVERNED = (
    "t", "labels", "outputs", "cgroupparent", "memory", "memswap", "cpushares", "cpuperiod",
    "cpuquota", "cpusetcpus", "cpusetmems", "shmsize", "networkmode", "extrahosts", "ulimits",
    "isolation", "securityopt",
)  # fmt: skip
KNOWN_PARAMS = frozenset(_PASS_FIRST) | frozenset(_GOVERNED)
# What `docker build -o` may export to with BuildKit: files sent back to the client itself.
_CLIENT_OUTPUTS = {"local", "tar"}
_NETWORK_FLAG = "--network"


def refuse(code: str, reason: str, fix: str) -> Denied:
    return Denied(deny(code, reason, fix))


def builder_version(route: Route) -> str:
    """ "1" (legacy builder) or "2" (BuildKit), as dockerd's ``parseVersion`` reads it."""
    value = route.q("version")
    if value in ("", "1"):
        return "1"
    if value == "2":
        return "2"
    raise Denied(deny("bad_request", f"unknown builder version {value!r}", "use docker build", 400))


def referenced_network(route: Route) -> str | None:
    """The user network a build names (``networkmode``), for the I/O edge to look up."""
    mode = route.q("networkmode")
    if not mode or mode in BUILTIN_NETWORKS or mode.startswith("container:"):
        return None
    return mode


def decide_build(route: Route, identity: Identity, limits: Limits, state: State) -> Decision:
    """Approve a build with its canonical, rewritten query (admins: only canonicalised)."""
    version = builder_version(route)
    query: dict[str, list[str]] = {}
    changes: list[str] = []
    for name in _PASS_FIRST:
        if name in route.query:
            query[name] = [route.q(name)]
    dropped = sorted(set(route.query) - KNOWN_PARAMS)
    if dropped:
        changes.append("dropped query parameters dockerd ignores: " + ", ".join(dropped))
    if limits.is_admin:
        for name in _GOVERNED:
            if name in route.query:
                multi = name in ("t", "extrahosts", "securityopt")
                query[name] = list(route.query[name]) if multi else [route.q(name)]
        return allow(query=query, changes=tuple(changes))
    _remote(route)
    _tags(route, query)
    _labels(route, query, changes)
    _outputs(route, query)
    _cgroup(route, identity, limits, state, query, changes)
    _memory(route, limits, query, changes)
    _cpus(route, limits, query, changes)
    _cpusets(route, query)
    _shm(route, limits, query, changes)
    _network(route, identity, limits, state, query, version, changes)
    _host_options(route, limits, query)
    # Tags the build writes must be the user's to write (policy.images owns that rule).
    refusal = check_tag_writes(query.get("t") or [], identity, limits, state)
    if refusal is not None:
        return refusal
    return allow(query=query, changes=tuple(changes))


# BuildKit's marker for "the context comes from the client's own session".
CLIENT_SESSION = "client-session"


def _remote(route: Route) -> None:
    """A remote context (a URL or git repository) is fetched by dockerd as root: with root's
    git configuration, credentials and SSH keys it could read what the user cannot."""
    remote = route.q("remote")
    if remote in ("", CLIENT_SESSION):
        return
    raise refuse(
        "build_remote",
        "building from a remote context (a URL or git repository) is not allowed: dockerd "
        "would fetch it as root, with root's credentials",
        "fetch it yourself (git clone URL dir, or curl), then docker build dir",
    )


def _tags(route: Route, query: dict[str, list[str]]) -> None:
    tags = list(route.query.get("t") or [])
    if tags:
        query["t"] = tags


def _labels(route: Route, query: dict[str, list[str]], changes: list[str]) -> None:
    raw = route.q("labels")
    if "labels" not in route.query:
        return
    labels = _json(raw, "labels", dict) or {}
    if not all(isinstance(v, str) for v in labels.values()):
        raise refuse("bad_request", "the build's labels are not strings", "use --label KEY=VALUE")
    # An image label claiming an owner would be read as ownership: only DS01 writes those.
    kept = {k: v for k, v in labels.items() if not _reserved_label(k)}
    if kept != labels:
        changes.append("removed reserved image labels")
    query["labels"] = [json.dumps(kept, separators=(",", ":"), sort_keys=True)]


def _outputs(route: Route, query: dict[str, list[str]]) -> None:
    if "outputs" not in route.query:
        return
    outputs = _json(route.q("outputs"), "outputs", list) or []
    for entry in outputs:
        kind = (entry or {}).get("Type") if isinstance(entry, dict) else None
        if kind not in _CLIENT_OUTPUTS:
            raise refuse(
                "build_output",
                f"docker build --output type={kind} is not allowed",
                "export with --output type=local,dest=DIR or type=tar, or build an image",
            )
    query["outputs"] = [route.q("outputs")]


def _cgroup(
    route: Route,
    identity: Identity,
    limits: Limits,
    state: State,
    query: dict[str, list[str]],
    changes: list[str],
) -> None:
    parent = cgroup_parent(state.cgroup_driver, identity.user, limits.group)
    given = route.q("cgroupparent")
    if given and given != parent:
        raise refuse(
            "cgroup_parent",
            "docker build --cgroup-parent is chosen by DS01 (your builds run in your own cgroup)",
            "drop --cgroup-parent",
        )
    query["cgroupparent"] = [parent]
    if given != parent:
        changes.append(f"cgroupparent={parent}")


def _int(route: Route, name: str, flag: str) -> int | None:
    """A numeric parameter as dockerd reads it; None when absent or empty.

    dockerd reads a value it cannot parse as 0 (``Int64ValueOrZero``): unlimited. Such values
    are refused rather than guessed at.
    """
    raw = route.q(name)
    if raw == "":
        return None
    if not _INT64.match(raw) or not -(2**63) <= int(raw) < 2**63:
        raise refuse(
            "bad_request", f"docker build {flag} {raw!r} is not a whole number", f"fix {flag}"
        )
    value = int(raw)
    if value < 0:
        raise refuse(
            "build_negative",
            f"docker build {flag} {value} (negative: unlimited) is not allowed",
            f"drop {flag} or give a positive value",
        )
    return value


def _memory(route: Route, limits: Limits, query: dict[str, list[str]], changes: list[str]) -> None:
    memory = _int(route, "memory", "--memory")
    swap = _int(route, "memswap", "--memory-swap")
    cap = limits.memory
    if cap is None:
        for name, value in (("memory", memory), ("memswap", swap)):
            if value is not None:
                query[name] = [str(value)]
        return
    if memory and memory > cap:
        raise refuse(
            "memory",
            f"docker build --memory {format_size(memory)} is over the per-container limit of "
            f"{format_size(cap)} for {who(limits)}",
            f"ask for at most --memory {format_size(cap)}",
        )
    memory = memory or cap
    if swap not in (None, 0, memory):
        raise refuse(
            "memory_swap",
            "docker build --memory-swap is not allowed: builds get no swap beyond --memory",
            "drop --memory-swap",
        )
    if route.q("memory") != str(memory):
        changes.append(f"memory={memory}")
    query["memory"] = [str(memory)]
    query["memswap"] = [str(memory)]


def _cpus(route: Route, limits: Limits, query: dict[str, list[str]], changes: list[str]) -> None:
    shares = _int(route, "cpushares", "--cpu-shares")
    if shares is not None:
        query["cpushares"] = [str(shares)]
    period = _int(route, "cpuperiod", "--cpu-period")
    quota = _int(route, "cpuquota", "--cpu-quota")
    if period and not MIN_CPU_PERIOD <= period <= MAX_CPU_PERIOD:
        raise refuse(
            "cpu_period",
            f"docker build --cpu-period {period} is outside 1000..1000000 microseconds",
            "drop --cpu-period",
        )
    caps = [c for c in (limits.max_cpus, limits.aggregate.cpus) if c is not None]
    cap = min(caps) if caps else None
    period = period or CPU_PERIOD_US
    if cap is None:
        if quota:
            query["cpuperiod"], query["cpuquota"] = [str(period)], [str(quota)]
        elif route.q("cpuperiod"):
            query["cpuperiod"] = [str(period)]
        return
    if quota and quota / period > cap + 1e-9:
        raise refuse(
            "max_cpus",
            f"docker build --cpu-quota {quota} (period {period}) is {quota / period:g} CPUs, over "
            f"the per-container limit of {cap:g} CPUs for {who(limits)}",
            f"ask for at most {cap:g} CPUs (--cpu-quota {int(cap * period)})",
        )
    if not quota:
        quota = max(MIN_CPU_PERIOD, int(cap * period))
        changes.append(f"cpuquota={quota}")
    query["cpuperiod"], query["cpuquota"] = [str(period)], [str(quota)]


def _cpusets(route: Route, query: dict[str, list[str]]) -> None:
    for name, flag in (("cpusetcpus", "--cpuset-cpus"), ("cpusetmems", "--cpuset-mems")):
        value = route.q(name)
        if not value:
            continue
        if not _CPUSET.match(value):
            raise refuse("bad_request", f"docker build {flag} {value!r} is not a CPU list", "")
        query[name] = [value]


def _shm(route: Route, limits: Limits, query: dict[str, list[str]], changes: list[str]) -> None:
    shm = _int(route, "shmsize", "--shm-size")
    cap = limits.shm_size
    if cap is not None and shm and shm > cap:
        raise refuse(
            "shmsize",
            f"docker build --shm-size {format_size(shm)} is over the per-container limit of "
            f"{format_size(cap)} for {who(limits)}",
            f"ask for at most --shm-size {format_size(cap)}",
        )
    if cap is not None and not shm:
        shm = cap
        changes.append(f"shmsize={cap}")
    if shm:
        query["shmsize"] = [str(shm)]


def _network(
    route: Route,
    identity: Identity,
    limits: Limits,
    state: State,
    query: dict[str, list[str]],
    version: str,
    changes: list[str],
) -> None:
    mode = route.q("networkmode")
    if mode == "host":
        # With BuildKit this is the network.host entitlement, which dockerd grants by default.
        raise refuse(
            "build_network_host",
            "docker build --network host is not allowed (RUN steps would share the host's network)",
            "drop --network host; builds reach the network through the default network",
        )
    if mode.startswith("container:"):
        raise refuse(
            "build_network_container",
            f"docker build --network {mode} is not allowed (RUN steps would join that "
            "container's network namespace)",
            "drop --network container:..., or use a network of your own",
        )
    if "networkmode" not in route.query:
        return
    if mode in BUILTIN_NETWORKS or mode == "":
        query["networkmode"] = [mode]
        return
    problem = network_ref_problem(mode, identity, limits, state)
    if problem is not None:
        raise Denied(problem)
    facts = state.related.get(f"network:{mode}")
    if version == "2":
        query["networkmode"] = [mode]  # BuildKit refuses user networks itself
        return
    # Name the very network that was checked: a name or ID prefix could be re-pointed.
    query["networkmode"] = [facts.id if facts is not None and facts.id else mode]
    if query["networkmode"] != [mode]:
        changes.append(f"networkmode={query['networkmode'][0]}")


def _host_options(route: Route, limits: Limits, query: dict[str, list[str]]) -> None:
    if any(route.query.get("extrahosts") or []):
        raise refuse(
            "build_extra_hosts",
            "docker build --add-host is not allowed for " + who(limits),
            "drop --add-host; add entries inside the Dockerfile's RUN step if needed",
        )
    if route.query.get("securityopt"):
        raise refuse("build_security_opt", "docker build --security-opt is not allowed", "drop it")
    ulimits = _json(route.q("ulimits"), "ulimits", list) if route.q("ulimits") else None
    if ulimits:
        # The policy grants no ulimits, and dockerd (root) may raise any hard limit.
        raise refuse(
            "build_ulimit",
            "docker build --ulimit is not allowed for " + who(limits),
            "drop --ulimit; builds get dockerd's default limits",
        )
    isolation = route.q("isolation")
    if isolation not in ("", "default"):
        raise refuse(
            "isolation", f"docker build --isolation {isolation} is not supported", "drop it"
        )
    if isolation:
        query["isolation"] = [isolation]


def _reserved_label(key: str) -> bool:
    return key.casefold().startswith(LABEL_PREFIX) and key not in USER_SETTABLE_LABELS


def _json(raw: str, name: str, kind: type) -> Any:
    try:
        value = json.loads(raw)
    except ValueError:
        raise refuse(
            "bad_request", f"the build's {name} parameter is not JSON", "use docker build"
        ) from None
    if value is not None and not isinstance(value, kind):
        raise refuse(
            "bad_request", f"the build's {name} parameter has the wrong shape", "use docker build"
        )
    return value
