"""PromQL escaping: string literals, literal regexes and label names."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metrics.promql import (
    InvalidLabelNameError,
    InvalidMetricNameError,
    escape_label_value,
    exact_matcher,
    grouping,
    quote_regex,
    regex_alternatives,
    union_matchers,
    validate_label_name,
    validate_metric_name,
)


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("llm-a", "llm-a"),
        ('say "hi"', 'say \\"hi\\"'),
        ("back\\slash", "back\\\\slash"),
        ("two\nlines", "two\\nlines"),
        ("tab\there", "tab\\there"),
        ("", ""),
    ],
)
def test_escape_label_value(value, escaped):
    assert escape_label_value(value) == escaped


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("pcs-0.decode", "pcs-0\\.decode"),
        ("a|b", "a\\|b"),
        ("(x)*+?", "\\(x\\)\\*\\+\\?"),
        ("with space", "with space"),
        ("back\\slash", "back\\\\slash"),
    ],
)
def test_quote_regex(value, quoted):
    assert quote_regex(value) == quoted


def test_regex_alternatives_sorted_and_unique():
    assert regex_alternatives(["b.c", "a", "b.c"]) == "a|b\\\\.c"


def test_union_matchers_renders_each_label():
    rendered = union_matchers({"namespace": ["llm"], "dynamo_namespace": ["llm-b", "llm-a"]})
    assert rendered == 'dynamo_namespace=~"llm-a|llm-b",namespace=~"llm"'


def test_exact_matcher_escapes_value():
    assert exact_matcher("name", 'a"b') == 'name="a\\"b"'


@pytest.mark.parametrize("name", ["namespace", "_x", "grove_io_podclique", "A1"])
def test_valid_label_names(name):
    assert validate_label_name(name) == name


@pytest.mark.parametrize("name", ["", "1abc", "dynamo-namespace", "grove.io/podclique", "a:b", "ä"])
def test_invalid_label_name_names_it(name):
    with pytest.raises(InvalidLabelNameError, match=re.escape(repr(name))):
        validate_label_name(name)


def test_grouping_validates_names():
    assert grouping(["namespace", "model"]) == "namespace, model"
    with pytest.raises(InvalidLabelNameError, match="'bad-name'"):
        grouping(["namespace", "bad-name"])


@pytest.mark.parametrize("name", ["vllm:num_requests_waiting", "up", "_x"])
def test_valid_metric_names(name):
    assert validate_metric_name(name) == name


@pytest.mark.parametrize("name", ["", "9lives", "a-b", "a b"])
def test_invalid_metric_names(name):
    with pytest.raises(InvalidMetricNameError, match="invalid Prometheus metric name"):
        validate_metric_name(name)


def _unescape_promql_string(text: str) -> str:
    """Undo the escapes escape_label_value writes, as the PromQL lexer does for these characters."""
    mapping = {"\\\\": "\\", '\\"': '"', "\\n": "\n", "\\r": "\r", "\\t": "\t"}
    return re.sub(r'\\[\\"nrt]', lambda match: mapping[match.group(0)], text)


@given(st.text())
def test_escape_label_value_round_trips(value):
    escaped = escape_label_value(value)
    assert _unescape_promql_string(escaped) == value
    assert re.search(r'(?<!\\)(\\\\)*"', escaped) is None, "an unescaped quote would end the string"


@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=0), min_size=1))
def test_regex_alternatives_match_exactly_the_values(values):
    pattern = re.compile(_unescape_promql_string(regex_alternatives(values)), re.DOTALL)
    for value in values:
        assert pattern.fullmatch(value)
    for value in values:
        decoy = value + "x"
        if decoy not in values:
            assert not pattern.fullmatch(decoy)
