"""The value of one signal for one target at one tick.

A sample is a number, idle or unknown, and the three are never confused. An idle window
(0/0, no traffic) may let a target go to its floor. An unknown value (failed or timed out
query, no series where one is expected) blocks every scale-down.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Mapping


class SampleKind(enum.Enum):
    VALUE = "value"
    IDLE = "idle"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Sample:
    """One observation: a finite number, an idle window, or an unknown value with its reason."""

    kind: SampleKind
    value: float | None = None
    reason: str = ""

    @classmethod
    def of(cls, value: float) -> Sample:
        """Wrap a finite number; NaN becomes idle (0/0) and an infinity becomes unknown."""
        if math.isnan(value):
            return cls.idle("0/0 over the window")
        if math.isinf(value):
            return cls.unknown(f"non-finite value {value}")
        return cls(SampleKind.VALUE, float(value))

    @classmethod
    def idle(cls, reason: str = "no traffic in the window") -> Sample:
        return cls(SampleKind.IDLE, None, reason)

    @classmethod
    def unknown(cls, reason: str) -> Sample:
        return cls(SampleKind.UNKNOWN, None, reason)

    @property
    def is_value(self) -> bool:
        return self.kind is SampleKind.VALUE

    @property
    def is_idle(self) -> bool:
        return self.kind is SampleKind.IDLE

    @property
    def is_unknown(self) -> bool:
        return self.kind is SampleKind.UNKNOWN

    def __str__(self) -> str:
        if self.kind is SampleKind.VALUE:
            return f"{self.value:g}"
        return f"{self.kind.value} ({self.reason})" if self.reason else self.kind.value


@dataclass(frozen=True)
class SignalRequest:
    """One signal that one target needs this tick.

    `series_labels` are the label values that identify the target's series, for example
    `{"namespace": "llm", "grove_io_podclique": "pcs-0-decode"}`. A metric source serves
    all requests of a tick with one query per signal and label set, never one per target.
    """

    target: str
    signal: str
    series_labels: Mapping[str, str] = field(default_factory=dict)

    def label_key(self) -> tuple[str, ...]:
        return tuple(sorted(self.series_labels))

    def label_values(self) -> tuple[str, ...]:
        return tuple(self.series_labels[name] for name in self.label_key())
