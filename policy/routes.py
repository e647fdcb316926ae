"""Routing the way dockerd routes: optional ``/vN.NN`` prefix, then moby's path templates.

Anything dockerd would route differently from us (encoded or doubled slashes, odd versions)
is refused before routing, so what we decide about is what dockerd executes.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlencode

# API versions dockerd has shipped and that we understand. Below 1.24 dockerd still honours
# legacy bodies (HostConfig on /start), so those are refused outright.
MIN_API_VERSION = (1, 24)
MAX_API_VERSION = (1, 54)

_VERSION = re.compile(r"^/v(\d+)\.(\d+)(/.*)$")
_TEMPLATE_PARAM = re.compile(r"\{([a-z_]+)\*?\}")
# A '%' not followed by two hex digits: Go's net/url drops the whole pair, Python keeps it.
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SEG = r"(?P<{}>[^/]+)"
_ANY = r"(?P<{}>.+)"


@dataclass(frozen=True)
class Route:
    method: str
    endpoint: str  # the template, e.g. "/containers/{id}/start" (bounded, for metrics)
    params: dict[str, str]
    query: dict[str, list[str]]
    version: tuple[int, int] | None
    path: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def q(self, name: str, default: str = "") -> str:
        """A query parameter as dockerd reads it (Go's ``Values.Get``: the first value)."""
        values = self.query.get(name)
        return values[0] if values else default

    def flag(self, name: str) -> bool:
        """A boolean query parameter as moby's ``httputils.BoolValue`` reads it."""
        return self.q(name).strip().lower() not in ("", "0", "no", "false", "none")

    def canonical_target(
        self,
        params: dict[str, str] | None = None,
        query: dict[str, list[str]] | None = None,
    ) -> str:
        """The request-target to forward: this route's path with ``params`` put in (full IDs
        the decision named) and the query re-serialised from what was decided on."""
        values = {**self.params, **(params or {})}
        path = _TEMPLATE_PARAM.sub(lambda m: values[m.group(1)], self.endpoint)
        if self.version is not None:
            path = f"/v{self.version[0]}.{self.version[1]}{path}"
        query = self.query if query is None else query
        return f"{path}?{urlencode(query, doseq=True)}" if query else path


class RouteError(ValueError):
    """The request target is one we refuse to interpret; the message says why."""


def _compile(template: str) -> re.Pattern[str]:
    out = ""
    for part in re.split(r"(\{[a-z_]+\*?\})", template):
        if part.startswith("{"):
            name = part.strip("{}*")
            out += (_ANY if part.endswith("*}") else _SEG).format(name)
        else:
            out += re.escape(part)
    return re.compile(f"^{out}$")


# (methods, template). `{name*}` matches across slashes, as moby's `{name:.*}` does.
_TEMPLATES: list[tuple[str, str]] = [
    ("GET HEAD", "/_ping"),
    ("GET", "/version"),
    ("GET", "/info"),
    ("GET", "/events"),
    ("GET", "/system/df"),
    ("POST", "/auth"),
    ("GET", "/containers/json"),
    ("POST", "/containers/create"),
    ("POST", "/containers/prune"),
    ("GET", "/containers/{id}/json"),
    ("GET", "/containers/{id}/top"),
    ("GET", "/containers/{id}/logs"),
    ("GET", "/containers/{id}/changes"),
    ("GET", "/containers/{id}/export"),
    ("GET", "/containers/{id}/stats"),
    ("GET", "/containers/{id}/attach/ws"),
    ("GET HEAD PUT", "/containers/{id}/archive"),
    ("POST", "/containers/{id}/resize"),
    ("POST", "/containers/{id}/start"),
    ("POST", "/containers/{id}/stop"),
    ("POST", "/containers/{id}/restart"),
    ("POST", "/containers/{id}/kill"),
    ("POST", "/containers/{id}/update"),
    ("POST", "/containers/{id}/rename"),
    ("POST", "/containers/{id}/pause"),
    ("POST", "/containers/{id}/unpause"),
    ("POST", "/containers/{id}/attach"),
    ("POST", "/containers/{id}/wait"),
    ("POST", "/containers/{id}/exec"),
    ("DELETE", "/containers/{id}"),
    ("POST", "/exec/{id}/start"),
    ("POST", "/exec/{id}/resize"),
    ("GET", "/exec/{id}/json"),
    ("GET", "/images/json"),
    ("POST", "/images/create"),
    ("POST", "/images/load"),
    ("GET", "/images/get"),
    ("GET", "/images/search"),
    ("POST", "/images/prune"),
    ("GET", "/images/{name*}/get"),
    ("GET", "/images/{name*}/history"),
    ("GET", "/images/{name*}/json"),
    ("POST", "/images/{name*}/push"),
    ("POST", "/images/{name*}/tag"),
    ("DELETE", "/images/{name*}"),
    ("POST", "/commit"),
    ("POST", "/build"),
    ("POST", "/build/prune"),
    ("POST", "/build/cancel"),
    ("POST", "/session"),
    ("POST", "/grpc"),
    ("GET", "/distribution/{name*}/json"),
    ("GET", "/volumes"),
    ("POST", "/volumes/create"),
    ("POST", "/volumes/prune"),
    ("GET", "/volumes/{name}"),
    ("PUT", "/volumes/{name}"),
    ("DELETE", "/volumes/{name}"),
    ("GET", "/networks"),
    ("POST", "/networks/create"),
    ("POST", "/networks/prune"),
    ("GET", "/networks/{id}"),
    ("POST", "/networks/{id}/connect"),
    ("POST", "/networks/{id}/disconnect"),
    ("DELETE", "/networks/{id}"),
    # Cluster and plugin administration: routed only so they can be refused by name.
    ("GET POST DELETE PUT", "/plugins{rest*}"),
    ("GET POST DELETE PUT", "/swarm{rest*}"),
    ("GET POST DELETE PUT", "/services{rest*}"),
    ("GET POST DELETE PUT", "/nodes{rest*}"),
    ("GET POST DELETE PUT", "/secrets{rest*}"),
    ("GET POST DELETE PUT", "/configs{rest*}"),
    ("GET POST DELETE PUT", "/tasks{rest*}"),
    ("GET POST DELETE PUT", "/plugins"),
    ("GET POST DELETE PUT", "/swarm"),
    ("GET POST DELETE PUT", "/services"),
    ("GET POST DELETE PUT", "/nodes"),
    ("GET POST DELETE PUT", "/secrets"),
    ("GET POST DELETE PUT", "/configs"),
    ("GET POST DELETE PUT", "/tasks"),
]
_ROUTES = [
    (frozenset(methods.split()), template, _compile(template)) for methods, template in _TEMPLATES
]


def _first_segment(path: str) -> str:
    return re.split(r"[/{]", path[1:], maxsplit=1)[0]


# Index by first path segment: routing is on every request's hot path.
_BY_SEGMENT: dict[str, list[tuple[frozenset[str], str, re.Pattern[str]]]] = {}
for _route in _ROUTES:
    _BY_SEGMENT.setdefault(_first_segment(_route[1]), []).append(_route)


def parse_route(method: str, target: str) -> Route:
    """Route ``method target`` like dockerd does, or raise RouteError with the reason.

    Both doors route each request several times (gateway, engine, plugin): short targets are
    remembered. Routes are shared, so nothing may change a Route's dicts (copy them instead).
    """
    if len(target) <= _CACHED_TARGET_MAX:
        return _parse_route_cached(method, target)
    return _parse_route(method, target)


_CACHED_TARGET_MAX = 512


@functools.lru_cache(maxsize=4096)
def _parse_route_cached(method: str, target: str) -> Route:
    return _parse_route(method, target)


def _parse_route(method: str, target: str) -> Route:
    if not target.startswith("/"):
        raise RouteError(f"request target {target[:80]!r} is not an absolute path")
    path, _, query_text = target.partition("?")
    if "#" in path:  # Go keeps it in the path; we will not guess how it routes
        raise RouteError("a '#' in the request path is not accepted")
    if "%" in path:
        raise RouteError("percent-encoded characters in the request path are not accepted")
    if "//" in path or "/./" in path or "/../" in path or path.endswith(("/.", "/..")):
        raise RouteError("the request path is not in canonical form (doubled slash or dot segment)")
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in path):
        raise RouteError("the request path contains control or non-ASCII characters")
    version = None
    match = _VERSION.match(path)
    if match:
        version = (int(match.group(1)), int(match.group(2)))
        if not (MIN_API_VERSION <= version <= MAX_API_VERSION):
            low, high = MIN_API_VERSION, MAX_API_VERSION
            raise RouteError(
                f"API version {version[0]}.{version[1]} is not supported "
                f"(DS01 accepts {low[0]}.{low[1]} to {high[0]}.{high[1]})"
            )
        path = match.group(3)
    elif path.startswith("/v") and re.match(r"^/v[0-9]", path):
        raise RouteError("malformed API version prefix in the request path")
    query = parse_query(query_text)
    method = method.upper()
    for methods, template, pattern in _BY_SEGMENT.get(_first_segment(path), ()):
        found = pattern.match(path)
        if found and method in methods:
            return Route(method, template, found.groupdict(), query, version, path)
    raise RouteError(f"{method} {path} is not a Docker API endpoint DS01 knows")


def parse_query(text: str) -> dict[str, list[str]]:
    """The query as dockerd's Go ``net/url`` reads it, or RouteError where the two would differ.

    Go drops a segment holding ``;`` (older Go split on it) or a bad ``%`` escape and reads
    the rest; Python keeps both. Either way what DS01 checked would not be what dockerd does,
    so such queries are refused, and what is forwarded is re-serialised from this parse.
    """
    if not text:
        return {}
    if ";" in text:
        raise RouteError("a ';' in the query string is read differently by dockerd")
    if _BAD_ESCAPE.search(text):
        raise RouteError("a malformed %-escape in the query string")
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in text):
        raise RouteError("the query string contains control or non-ASCII characters")
    try:
        query = parse_qs(text, keep_blank_values=True, strict_parsing=False, errors="strict")
    except (ValueError, UnicodeDecodeError) as exc:
        raise RouteError(f"unparsable query string: {exc}") from None
    for key, values in query.items():
        if _has_control(key) or any(_has_control(v) for v in values):
            raise RouteError("the query string decodes to control characters")
    return query


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)
