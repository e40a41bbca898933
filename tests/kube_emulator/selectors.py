"""Label and field selectors in the query-string syntax of the Kubernetes API."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import bad_request

_SET_REQUIREMENT = re.compile(r"^\s*(!?)\s*([A-Za-z0-9._/-]+)\s*(?:(notin|in)\s*\(([^)]*)\))?\s*$")
_EQUALITY_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9._/-]+)\s*(==|!=|=)\s*([A-Za-z0-9._-]*)\s*$")

FIELD_SELECTOR_PATHS = {"metadata.name": ("metadata", "name"), "metadata.namespace": ("metadata", "namespace")}


@dataclass(frozen=True)
class Requirement:
    """One clause of a selector; `operator` is one of =, !=, in, notin, exists, !."""

    key: str
    operator: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.operator == "=":
            return present and value in self.values
        if self.operator == "!=":
            return not present or value not in self.values
        if self.operator == "in":
            return present and value in self.values
        if self.operator == "notin":
            return not present or value not in self.values
        if self.operator == "exists":
            return present
        return not present


def _split_clauses(text: str) -> list[str]:
    """Split on commas outside parentheses, since `in (a,b)` carries commas of its own."""
    clauses, depth, current = [], 0, []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            clauses.append("".join(current))
            current = []
        else:
            current.append(char)
    clauses.append("".join(current))
    return [clause for clause in clauses if clause.strip()]


def parse_label_selector(text: str) -> list[Requirement]:
    """Parse `a=b,c!=d,e in (f,g),h notin (i),j,!k`, raising a 400 ApiError that names an invalid clause."""
    requirements = []
    for clause in _split_clauses(text or ""):
        equality = _EQUALITY_REQUIREMENT.match(clause)
        if equality:
            key, operator, value = equality.groups()
            requirements.append(Requirement(key, "!=" if operator == "!=" else "=", frozenset({value})))
            continue
        set_based = _SET_REQUIREMENT.match(clause)
        if set_based is None:
            raise bad_request(f"unable to parse requirement: invalid label selector clause {clause.strip()!r}")
        negated, key, operator, values = set_based.groups()
        if operator:
            if negated:
                raise bad_request(f"unable to parse requirement: {clause.strip()!r} mixes ! with {operator}")
            parsed = frozenset(value.strip() for value in values.split(",") if value.strip())
            requirements.append(Requirement(key, operator, parsed))
        else:
            requirements.append(Requirement(key, "!" if negated else "exists"))
    return requirements


def parse_field_selector(text: str) -> list[tuple[tuple[str, ...], str, str]]:
    """Parse `metadata.name=x,metadata.namespace!=y` into (path, operator, value) triples."""
    result = []
    for clause in _split_clauses(text or ""):
        match = re.match(r"^\s*([A-Za-z.]+)\s*(==|!=|=)\s*(.*?)\s*$", clause)
        if match is None:
            raise bad_request(f"invalid field selector clause {clause.strip()!r}: expected field=value")
        field_name, operator, value = match.groups()
        if field_name not in FIELD_SELECTOR_PATHS:
            raise bad_request(f'field label not supported: {field_name} (supported: {", ".join(FIELD_SELECTOR_PATHS)})')
        result.append((FIELD_SELECTOR_PATHS[field_name], "!=" if operator == "!=" else "=", value))
    return result


@dataclass(frozen=True)
class Selector:
    """A parsed labelSelector plus fieldSelector, applied to whole objects."""

    labels: tuple[Requirement, ...] = ()
    fields: tuple[tuple[tuple[str, ...], str, str], ...] = ()

    @classmethod
    def parse(cls, label_selector: str | None, field_selector: str | None) -> Selector:
        return cls(tuple(parse_label_selector(label_selector or "")), tuple(parse_field_selector(field_selector or "")))

    def matches(self, obj: dict[str, Any]) -> bool:
        metadata = obj.get("metadata", {})
        labels = metadata.get("labels") or {}
        if not all(requirement.matches(labels) for requirement in self.labels):
            return False
        for path, operator, expected in self.fields:
            actual = obj
            for key in path:
                actual = actual.get(key, "") if isinstance(actual, dict) else ""
            if (actual == expected) != (operator == "="):
                return False
        return True
