"""Loading and validating the YAML policy, with errors that name file, line, key and reason."""

from __future__ import annotations

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


_StrictLoader.add_constructor("tag:yaml.org,2002:timestamp", _StrictLoader.construct_yaml_str)


def _duplicate_key(node: yaml.Node | None, path: list[Any]) -> tuple[list[Any], int] | None:
    """The path and line of the first key written twice in one mapping (PyYAML would keep the
    last silently, as a request body must not either)."""
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                return [*path, key], key_node.start_mark.line + 1
            seen.add(key)
            found = _duplicate_key(value_node, [*path, key])
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found = _duplicate_key(item, [*path, i])
            if found:
                return found
    return None


def _non_finite(value: Any, path: list[Any]) -> list[Any] | None:
    """The path of the first NaN or infinity in ``value`` (jsonschema's bounds let them by)."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return path
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, item in items:
        found = _non_finite(item, [*path, key])
        if found is not None:
            return found
    return None


def parse_policy(text: str, source: str = "policy.yaml") -> PolicyDocument:
    """Parse and validate policy text; raise PolicyError for the first problem found."""
    try:
        root = yaml.compose(text, Loader=_StrictLoader)
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        reason = f"not valid YAML: {getattr(exc, 'problem', exc)}"
        raise PolicyError(source, line, "", reason) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(source, 1, "", "the policy must be a mapping with defaults/groups/users")
    duplicate = _duplicate_key(root, [])
    if duplicate is not None:
        path, line = duplicate
        raise PolicyError(source, line, _dotted(path), "this key is written twice in one mapping")
    bad = _non_finite(data, [])
    if bad is not None:
        raise PolicyError(source, _line_of(root, bad), _dotted(bad), "not a finite number")
    errors = list(_VALIDATOR.iter_errors(data))
    if errors:
        error = _most_specific(min(errors, key=_rank))
        path = list(error.absolute_path)
        if error.validator in _UNKNOWN_KEY:
            path.append(_unknown_keys(error)[0])
        raise PolicyError(source, _line_of(root, path), _dotted(path), _reason(error))
    return PolicyDocument(data=data, source=source)


_UNKNOWN_KEY = ("additionalProperties", "unevaluatedProperties")


def _rank(error: jsonschema.ValidationError) -> tuple[int, int, str]:
    # A bad value explains more than the "unevaluated key" it also causes; deeper is clearer.
    return (error.validator in _UNKNOWN_KEY, -len(error.absolute_path), error.message)


def _most_specific(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    # anyOf errors wrap the useful one in their context: prefer the branch that got past `type`.
    while error.context:
        error = min(error.context, key=lambda e: (e.validator == "type", _rank(e)))
    return error


def _unknown_keys(error: jsonschema.ValidationError) -> list[str]:
    allowed = set(error.schema.get("properties", {})) if isinstance(error.schema, dict) else set()
    keys = (
        [k for k in error.instance if k not in allowed] if isinstance(error.instance, dict) else []
    )
    quoted = re.findall(r"'([^']+)'", error.message)
    return [k for k in keys if k in quoted] or quoted or ["?"]


def _reason(error: jsonschema.ValidationError) -> str:
    if error.validator == "format" and error.cause is not None:
        return str(error.cause)
    if error.validator in _UNKNOWN_KEY:
        return "unknown key; see the configuration reference in README.md"
    if error.validator == "type" and error.parent is not None:
        # In an anyOf of null and a type, name the type that was meant, not "null".
        wanted = [
            t
            for e in error.parent.context or []
            if e.validator == "type"
            for t in (
                [e.validator_value] if isinstance(e.validator_value, str) else e.validator_value
            )
            if t != "null"
        ]
        if wanted:
            return f"{error.instance!r} is not of type {' or '.join(repr(t) for t in wanted)}"
    if error.validator == "minimum":
        return f"{error.instance!r} is below the minimum {error.schema['minimum']}"
    return error.message


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
