"""Build the pieces of PromQL queries from untrusted strings: label values and label names.

Label values come from Kubernetes object names and configuration, so they are escaped before they
are placed in a double-quoted PromQL string, and quoted as literals before they join a regular
expression matcher.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping, Sequence

LABEL_NAME_PATTERN = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
METRIC_NAME_PATTERN = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")

# Characters that are special in RE2, the regular expression syntax of Prometheus. These are the
# characters Go's regexp.QuoteMeta escapes; RE2 rejects escapes of other characters such as a space.
_REGEX_SPECIAL = frozenset("\\.+*?()|[]{}^$")

_STRING_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


class InvalidLabelNameError(ValueError):
    """A label name that Prometheus would reject, or that would change the meaning of a query."""


class InvalidMetricNameError(ValueError):
    """A metric name that does not match the Prometheus metric name syntax."""


def escape_label_value(value: str) -> str:
    """Escape a value for use between double quotes in PromQL.

    Backslash, double quote, newline, carriage return and tab become their backslash escapes, so
    the string literal evaluates to exactly `value`.
    """
    return "".join(_STRING_ESCAPES.get(character, character) for character in value)


def quote_regex(value: str) -> str:
    """Return a regular expression that matches exactly `value` (before string escaping)."""
    return "".join("\\" + character if character in _REGEX_SPECIAL else character for character in value)


def regex_alternatives(values: Iterable[str]) -> str:
    """Build the body of a `=~"..."` matcher that matches any of `values` exactly.

    Prometheus anchors label regexes at both ends, so `a|b` matches only `a` or `b`. The values are
    sorted and deduplicated so the same set of targets always produces the same query text.
    """
    alternatives = "|".join(quote_regex(value) for value in sorted(set(values)))
    return escape_label_value(alternatives)


def validate_label_name(name: str) -> str:
    """Return `name` if it is a valid Prometheus label name; raise InvalidLabelNameError otherwise."""
    if not isinstance(name, str) or LABEL_NAME_PATTERN.fullmatch(name) is None:
        raise InvalidLabelNameError(
            f"invalid Prometheus label name {name!r}: a label name must match [a-zA-Z_][a-zA-Z0-9_]*"
        )
    return name


def validate_metric_name(name: str) -> str:
    """Return `name` if it is a valid Prometheus metric name; raise InvalidMetricNameError otherwise."""
    if not isinstance(name, str) or METRIC_NAME_PATTERN.fullmatch(name) is None:
        raise InvalidMetricNameError(
            f"invalid Prometheus metric name {name!r}: a metric name must match [a-zA-Z_:][a-zA-Z0-9_:]*"
        )
    return name


def exact_matcher(name: str, value: str) -> str:
    """Render `name="value"` with the value escaped."""
    return f'{validate_label_name(name)}="{escape_label_value(value)}"'


def union_matchers(values_by_label: Mapping[str, Iterable[str]]) -> str:
    """Render one `label=~"v1|v2"` matcher per label, comma-separated and without braces.

    The result selects the union of all values of each label. Combinations that no target asked for
    can match too, so callers pick their series from the grouped result by the exact label values.
    """
    parts = []
    for name in sorted(values_by_label):
        validate_label_name(name)
        parts.append(f'{name}=~"{regex_alternatives(values_by_label[name])}"')
    return ",".join(parts)


def grouping(labels: Sequence[str]) -> str:
    """Render label names for `by (...)`, validated, comma-separated."""
    return ", ".join(validate_label_name(name) for name in labels)
