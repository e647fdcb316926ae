"""Loading and validating the YAML policy, with errors that name file, line, key and reason."""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jsonschema
import yaml

from formats.units import UnitError, parse_duration, parse_size


class PolicyError(ValueError):
    """A policy that cannot be used; ``str()`` is ``file:line key.path: reason``."""

    def __init__(self, source: str, line: int | None, path: str, reason: str) -> None:
        self.source, self.line, self.path, self.reason = source, line, path, reason
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where} {path}: {reason}" if path else f"{where}: {reason}")


@dataclass(frozen=True)
class PolicyDocument:
    """A validated policy as plain data, plus where it came from."""

    data: dict[str, Any]
    source: str


def load_schema() -> dict[str, Any]:
    return json.loads(resources.files("config").joinpath("policy.schema.json").read_text())


def default_policy_text() -> str:
    return resources.files("config").joinpath("default-policy.yaml").read_text()


_FORMATS = jsonschema.FormatChecker()


@_FORMATS.checks("size", raises=UnitError)
def _is_size(value: object) -> bool:
    return parse_size(value) is not None or value is None


@_FORMATS.checks("duration", raises=UnitError)
def _is_duration(value: object) -> bool:
    return parse_duration(value) is not None or value is None


_VALIDATOR = jsonschema.Draft202012Validator(load_schema(), format_checker=_FORMATS)


class _StrictLoader(yaml.SafeLoader):
    """Dates stay the strings the admin wrote (the schema validates them as ISO dates)."""


def _timestamp_as_text(loader: _StrictLoader, node: yaml.Node) -> str:
    return loader.construct_yaml_str(node)


_StrictLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_as_text)


def _duplicate_keys(node: yaml.Node | None, path: list[Any]) -> list[tuple[list[Any], int]]:
    """The path and line of every key written twice in one mapping (PyYAML would keep the
    last silently, as a request body must not either)."""
    found: list[tuple[list[Any], int]] = []
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                found.append(([*path, key], key_node.start_mark.line + 1))
            seen.add(key)
            found += _duplicate_keys(value_node, [*path, key])
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found += _duplicate_keys(item, [*path, i])
    return found


def _non_finite(value: Any, path: list[Any]) -> list[list[Any]]:
    """The paths of every NaN or infinity in ``value`` (jsonschema's bounds let them by)."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return [path]
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    return [found for key, item in items for found in _non_finite(item, [*path, key])]


# Plain words for the YAML parser's complaints, which are nearly always indentation mistakes.
_INDENTATION = (
    "the indentation of this line does not match the lines above: keys of one mapping start "
    "in the same column, and a key's own settings go further right, under it"
)
_YAML_PLAIN = (
    ("found character '\\t'", "a tab character: indent with spaces only, never tabs"),
    ("expected <block end>", _INDENTATION),
    ("did not find expected key", _INDENTATION),
    ("could not find expected ':'", "a line that is not `key: value`: " + _INDENTATION),
    (
        "mapping values are not allowed here",
        "a `key:` where YAML expected none: check this line's indentation, "
        "or quote a value that contains ': '",
    ),
)


def _yaml_reason(exc: yaml.YAMLError) -> str:
    problem = str(getattr(exc, "problem", None) or exc)
    for pattern, plain in _YAML_PLAIN:
        if pattern in problem:
            return f"not valid YAML: {plain}"
    return f"not valid YAML: {problem}"


def check_policy(
    text: str, source: str = "policy.yaml"
) -> tuple[PolicyDocument | None, list[PolicyError]]:
    """Every problem of policy text, in file order; the document only when there are none."""
    document, ranked = _check(text, source)
    errors = [e for _, e in sorted(ranked, key=lambda r: (r[1].line or 0, r[1].path))]
    return document, errors


def parse_policy(text: str, source: str = "policy.yaml") -> PolicyDocument:
    """Parse and validate policy text; raise PolicyError for the most telling problem."""
    document, ranked = _check(text, source)
    if document is None:
        raise min(ranked, key=lambda r: r[0])[1]
    return document


_Ranked = list[tuple[tuple[Any, ...], PolicyError]]


def _check(text: str, source: str) -> tuple[PolicyDocument | None, _Ranked]:
    try:
        root = yaml.compose(text, Loader=_StrictLoader)
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        return None, [((0,), PolicyError(source, line, "", _yaml_reason(exc)))]
    if data is None:
        data = {}
    if not isinstance(data, dict):
        reason = "the policy must be a mapping with defaults/groups/users"
        return None, [((0,), PolicyError(source, 1, "", reason))]
    ranked: _Ranked = []
    for path, line in _duplicate_keys(root, []):
        error = PolicyError(source, line, _dotted(path), "this key is written twice in one mapping")
        ranked.append(((1, line), error))
    for path in _non_finite(data, []):
        error = PolicyError(source, _line_of(root, path), _dotted(path), "not a finite number")
        ranked.append(((2, error.line or 0), error))
    seen: set[tuple[str, str]] = set()
    for rank, path, reason in _schema_problems(data):
        if (_dotted(path), reason) not in seen:
            seen.add((_dotted(path), reason))
            ranked.append(
                ((3, *rank), PolicyError(source, _line_of(root, path), _dotted(path), reason))
            )
    if ranked:
        return None, ranked
    return PolicyDocument(data=data, source=source), []


_UNKNOWN_KEY = ("additionalProperties", "unevaluatedProperties")
_SCHEMA = load_schema()


def _schema_problems(data: dict[str, Any]) -> list[tuple[tuple[Any, ...], list[Any], str]]:
    """(rank, key path, reason) of every schema violation, one per unknown key."""
    out = []
    for top in _VALIDATOR.iter_errors(data):
        error = _most_specific(top)
        path = list(error.absolute_path)
        if error.validator in _UNKNOWN_KEY:
            allowed = _allowed_keys(error.schema)
            for key in _unknown_keys(error, allowed):
                out.append((_rank(error), [*path, key], _unknown_reason(path, key, allowed)))
        else:
            out.append((_rank(error), path, _plain(error, path) or _reason(error)))
    return out


def _rank(error: jsonschema.ValidationError) -> tuple[int, int, str]:
    # A bad value explains more than the "unevaluated key" it also causes; deeper is clearer.
    return (error.validator in _UNKNOWN_KEY, -len(error.absolute_path), error.message)


def _most_specific(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    # anyOf errors wrap the useful one in their context: prefer the branch that got past `type`.
    while error.context:
        error = min(error.context, key=lambda e: (e.validator == "type", _rank(e)))
    return error


def _deref(schema: Any) -> Any:
    ref = schema.get("$ref", "") if isinstance(schema, dict) else ""
    if not ref.startswith("#/"):
        return None
    node: Any = _SCHEMA
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _allowed_keys(schema: Any) -> set[str]:
    """Every key a mapping under ``schema`` may have (its properties, through $ref and allOf)."""
    if not isinstance(schema, dict):
        return set()
    keys = set(schema.get("properties", {}))
    keys |= _allowed_keys(_deref(schema))
    for sub in schema.get("allOf", []):
        keys |= _allowed_keys(sub)
    return keys


def _unknown_keys(error: jsonschema.ValidationError, allowed: set[str]) -> list[str]:
    # A known key whose value failed is also "unevaluated": its own error says more.
    if isinstance(error.instance, dict):
        return [str(k) for k in error.instance if str(k) not in allowed]
    return re.findall(r"'([^']+)'", error.message) or ["?"]


_LIMIT_KEYS = frozenset(_SCHEMA["$defs"]["limits"]["properties"])
_README = "see the configuration reference in README.md"


def _unknown_reason(path: list[Any], key: str, allowed: set[str]) -> str:
    if not path and key in _LIMIT_KEYS:
        return (
            f"unknown key at the top level: {key} is a limit, so it belongs under defaults:, "
            "a group or a user (indent it under one of them)"
        )
    if key in ("members", "unix_groups") and path[:1] == ["users"]:
        return f"unknown key; {key} belongs to a group (groups.NAME.{key}), not to a user"
    near = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.6)
    if near:
        return f"unknown key; did you mean {near[0]}? ({_README})"
    return f"unknown key; {_README}"


def _plain(error: jsonschema.ValidationError, path: list[Any]) -> str | None:
    """Plain words for the type errors an indentation mistake makes, else None."""
    if error.validator != "type" or "object" not in str(error.validator_value):
        return None
    name = str(path[-1]) if path else ""
    if len(path) == 2 and path[0] in ("groups", "users") and name in _LIMIT_KEYS:
        owner = "group" if path[0] == "groups" else "user"
        return f"{name} is a limit, not a {owner}: indent it further, under the {owner} above it"
    if error.instance is None:
        return (
            f"empty: its settings belong on the lines below it, indented further than `{name}:`"
            if name
            else "empty"
        )
    return None


def _reason(error: jsonschema.ValidationError) -> str:
    if error.validator == "format" and error.cause is not None:
        return str(error.cause)
    if error.validator == "type" and error.parent is not None:
        # In an anyOf of null and a type, name the type that was meant, not "null".
        wanted = [
            t
            for e in error.parent.context or []
            if e.validator == "type"
            for t in _type_names(e.validator_value)
            if t != "null"
        ]
        if wanted:
            return f"{error.instance!r} is not of type {' or '.join(repr(t) for t in wanted)}"
    if error.validator == "minimum":
        return f"{error.instance!r} is below the minimum {error.validator_value}"
    return error.message


def _type_names(value: object) -> list[str]:
    """A schema's ``type``: one name or a list of them."""
    if isinstance(value, str):
        return [value]
    return [str(t) for t in value] if isinstance(value, list) else []


def _dotted(path: list[Any]) -> str:
    return ".".join(str(p) for p in path)


def _line_of(node: yaml.Node | None, path: list[Any]) -> int | None:
    """The 1-based line of the YAML node at ``path`` (or of its nearest existing parent)."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for key in path:
        child = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(key):
                    child = v
                    line = k.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            child = node.value[key]
            line = child.start_mark.line + 1
        if child is None:
            return line
        node = child
    return line
