"""argparse value types shared by the commands: each rejects bad text with the expected range."""

from __future__ import annotations

import argparse
import math
from typing import Callable


def _checked(text: str, convert: Callable[[str], float], accept: Callable[[float], bool], expected: str) -> float:
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected {expected}") from None
    if not math.isfinite(value) or not accept(value):
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected {expected}")
    return value


def non_negative_int(text: str) -> int:
    return int(_checked(text, int, lambda value: value >= 0, "an integer >= 0"))


def positive_number(text: str) -> float:
    return _checked(text, float, lambda value: value > 0, "a number > 0")


def non_negative_seconds(text: str) -> float:
    return _checked(text, float, lambda value: value >= 0, "a finite number of seconds >= 0")


def port(text: str) -> int:
    return int(_checked(text, int, lambda value: 0 <= value <= 65535, "a port number from 0 to 65535"))
