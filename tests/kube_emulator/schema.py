"""Structural-schema handling for custom resources: pruning, defaulting and the cheap validations.

The real API server prunes fields the schema does not declare, applies `default` values, then validates.
This module covers `type`, `required`, `enum`, `minimum`/`maximum`, `properties`, `additionalProperties`,
`items`, `x-kubernetes-int-or-string` and `x-kubernetes-preserve-unknown-fields`.
NOTE: patterns, string lengths, formats and CEL rules (x-kubernetes-validations) are not checked.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

# Keys never pruned, whatever the schema declares. The server checks metadata itself, not through the CRD schema.
ROOT_KEYS = ("apiVersion", "kind", "metadata")

_JSON_TYPE_NAMES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}


@dataclass
class SchemaOutcome:
    """Fields pruned as unknown (dotted paths) and validation failures as metav1.StatusCause dicts."""

    unknown_fields: list[str] = field(default_factory=list)
    causes: list[dict[str, str]] = field(default_factory=list)

    def fail(self, path: str, reason: str, message: str) -> None:
        self.causes.append({"reason": reason, "message": message, "field": path})


def normalize_object(schema: dict[str, Any], obj: dict[str, Any]) -> tuple[dict[str, Any], SchemaOutcome]:
    """Return a pruned and defaulted copy of a custom object, with what was pruned and what is invalid."""
    outcome = SchemaOutcome()
    root_fields = {key: obj[key] for key in ROOT_KEYS if key in obj}
    body = {key: value for key, value in obj.items() if key not in ROOT_KEYS}
    root_schema = dict(schema)
    root_schema["properties"] = {
        key: value for key, value in schema.get("properties", {}).items() if key not in ROOT_KEYS
    }
    root_schema["required"] = [key for key in schema.get("required", ()) if key not in ROOT_KEYS]
    normalized = _normalize(root_schema, copy.deepcopy(body), "", outcome)
    return root_fields | normalized, outcome


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(value: Any) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _type_matches(schema: dict[str, Any], value: Any) -> bool:
    if schema.get("x-kubernetes-int-or-string"):
        return isinstance(value, (int, str)) and not isinstance(value, bool)
    expected = schema.get("type")
    if expected is None:
        return True
    if expected == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if expected == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return _type_name(value) == expected


def _normalize(schema: dict[str, Any], value: Any, path: str, outcome: SchemaOutcome) -> Any:
    if not _type_matches(schema, value):
        expected = "integer or string" if schema.get("x-kubernetes-int-or-string") else schema.get("type")
        outcome.fail(path, "FieldValueTypeInvalid",
                     f"Invalid value: {value!r}: {path} in body must be of type {expected}: {_type_name(value)!r}")
        return value

    if isinstance(value, dict):
        return _normalize_object(schema, value, path, outcome)
    if isinstance(value, list):
        item_schema = schema.get("items")
        if item_schema is None:
            return value
        return [_normalize(item_schema, item, f"{path}[{index}]", outcome) for index, item in enumerate(value)]

    _check_scalar(schema, value, path, outcome)
    return value


def _normalize_object(schema: dict[str, Any], value: dict[str, Any], path: str, outcome: SchemaOutcome) -> dict:
    properties = schema.get("properties")
    additional = schema.get("additionalProperties")
    preserve = schema.get("x-kubernetes-preserve-unknown-fields", False)

    result: dict[str, Any] = {}
    for key, item in value.items():
        child_path = _join(path, key)
        if item is None:
            # A null for a non-nullable field is dropped, so that a default can apply instead.
            child_schema = (properties or {}).get(key)
            if child_schema is not None and child_schema.get("nullable"):
                result[key] = None
            continue
        if properties is not None and key in properties:
            result[key] = _normalize(properties[key], item, child_path, outcome)
        elif isinstance(additional, dict):
            result[key] = _normalize(additional, item, child_path, outcome)
        elif preserve or additional is True:
            result[key] = item
        else:
            outcome.unknown_fields.append(child_path)

    for key, child_schema in (properties or {}).items():
        if key not in result and "default" in child_schema:
            result[key] = _normalize(child_schema, copy.deepcopy(child_schema["default"]), _join(path, key),
                                     outcome)

    for key in schema.get("required", ()):
        if key not in result:
            outcome.fail(_join(path, key), "FieldValueRequired", "Required value")
    return result


def _check_scalar(schema: dict[str, Any], value: Any, path: str, outcome: SchemaOutcome) -> None:
    allowed = schema.get("enum")
    if allowed is not None and value not in allowed:
        choices = ", ".join(repr(choice) for choice in allowed)
        outcome.fail(path, "FieldValueNotSupported", f"Unsupported value: {value!r}: supported values: {choices}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        minimum = schema.get("minimum")
        maximum = schema.get("maximum")
        if minimum is not None and value < minimum:
            outcome.fail(path, "FieldValueInvalid",
                         f"Invalid value: {value}: {path} in body should be greater than or equal to {minimum}")
        if maximum is not None and value > maximum:
            outcome.fail(path, "FieldValueInvalid",
                         f"Invalid value: {value}: {path} in body should be less than or equal to {maximum}")
