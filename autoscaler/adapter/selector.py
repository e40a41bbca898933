"""Kubernetes label selectors (the `labelSelector` query parameter) parsed and matched.

The grammar is the one `k8s.io/apimachinery/pkg/labels.Parse` accepts: comma-separated
requirements `key`, `!key`, `key=value`, `key==value`, `key!=value`, `key in (a,b)`,
`key notin (a,b)`, `key>N` and `key<N`. An empty selector matches everything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
_NAME_PATTERN = re.compile(_NAME)
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_INTEGER = re.compile(r"-?[0-9]+")

# Characters that end an identifier. Every other character, `/`, `.` and `-` included, belongs to one.
_SPECIAL = set("!=<>(),")
_KEYWORDS = {"in", "notin"}


class SelectorError(ValueError):
    """An invalid label selector; the message names the selector and the invalid part."""


@dataclass(frozen=True)
class Requirement:
    """One term of a selector: `operator` is one of = != in notin exists !exists gt lt."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "exists":
            return present
        if self.operator == "!exists":
            return not present
        if self.operator in ("=", "in"):
            return present and labels[self.key] in self.values
        if self.operator in ("!=", "notin"):
            return not present or labels[self.key] not in self.values

        # gt and lt compare integers, so a label that is missing or not an integer does not match.
        if not present or not _INTEGER.fullmatch(labels[self.key]):
            return False
        label_value = int(labels[self.key])
        bound = int(self.values[0])
        return label_value > bound if self.operator == "gt" else label_value < bound


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(requirement.matches(labels) for requirement in self.requirements)

    def __str__(self) -> str:
        return ",".join(_format(requirement) for requirement in self.requirements)


def parse_selector(text: str | None) -> LabelSelector:
    """Parse a selector string; raise SelectorError naming the selector and the problem."""
    if text is None or not text.strip():
        return LabelSelector()
    parser = _Parser(text)
    return LabelSelector(tuple(parser.parse()))


def _format(requirement: Requirement) -> str:
    key, operator, values = requirement.key, requirement.operator, requirement.values
    if operator == "exists":
        return key
    if operator == "!exists":
        return f"!{key}"
    if operator in ("in", "notin"):
        return f"{key} {operator} ({','.join(values)})"
    symbol = {"gt": ">", "lt": "<"}.get(operator, operator)
    return f"{key}{symbol}{values[0]}"


def _tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char.isspace():
            position += 1
            continue
        if text.startswith(("==", "!="), position):
            tokens.append(text[position : position + 2])
            position += 2
            continue
        if char in _SPECIAL:
            tokens.append(char)
            position += 1
            continue
        end = position
        while end < len(text) and not text[end].isspace() and text[end] not in _SPECIAL:
            end += 1
        tokens.append(text[position:end])
        position = end
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.position = 0

    def fail(self, problem: str) -> SelectorError:
        return SelectorError(f"invalid label selector {self.text!r}: {problem}")

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> str | None:
        token = self.peek()
        self.position += 1
        return token

    def parse(self) -> list[Requirement]:
        requirements = [self.requirement()]
        while self.peek() is not None:
            if self.take() != ",":
                raise self.fail(f"expected ',' before {self.tokens[self.position - 1]!r}")
            requirements.append(self.requirement())
        return requirements

    def requirement(self) -> Requirement:
        if self.peek() == "!":
            self.take()
            return Requirement(self.key(), "!exists")
        key = self.key()
        operator = self.peek()
        if operator is None or operator == ",":
            return Requirement(key, "exists")
        self.take()
        if operator in ("=", "==", "!="):
            return Requirement(key, "!=" if operator == "!=" else "=", (self.value(allow_empty=True),))
        if operator in (">", "<"):
            bound = self.value(allow_empty=False)
            if not _INTEGER.fullmatch(bound):
                raise self.fail(f"{key}{operator}{bound}: the value of > and < must be an integer")
            return Requirement(key, "gt" if operator == ">" else "lt", (bound,))
        if operator in _KEYWORDS:
            return Requirement(key, operator, self.value_set())
        raise self.fail(f"unexpected {operator!r} after key {key!r}, expected =, ==, !=, in, notin, > or <")

    def key(self) -> str:
        token = self.take()
        if token is None or token in _SPECIAL or token in ("==", "!="):
            raise self.fail(f"expected a label key, got {token!r}")
        _check_key(token, self.fail)
        return token

    def value(self, *, allow_empty: bool) -> str:
        token = self.peek()
        if token is None or token in (",", ")"):
            if allow_empty:
                return ""
            raise self.fail("missing value at the end of a requirement")
        self.take()
        _check_value(token, self.fail)
        return token

    def value_set(self) -> tuple[str, ...]:
        if self.take() != "(":
            raise self.fail("expected '(' after in/notin")
        values = [self.value(allow_empty=True)]
        while self.peek() == ",":
            self.take()
            values.append(self.value(allow_empty=True))
        if self.take() != ")":
            raise self.fail("expected ')' to close the value set")
        return tuple(values)


def _check_key(key: str, fail) -> None:
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        raise fail(f"key {key!r}: prefix {prefix!r} is not a DNS subdomain")
    if not name or len(name) > 63 or not _NAME_PATTERN.fullmatch(name):
        raise fail(f"key {key!r}: name part must be 1-63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric")


def _check_value(value: str, fail) -> None:
    if len(value) > 63 or not _NAME_PATTERN.fullmatch(value):
        raise fail(f"value {value!r} must be at most 63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric")
