"""The contract between the engine and a scaling policy, built-in or plugin.

A policy is a small pure unit: it reads the samples of the signals it declared and the
target's current replica count, and returns a raw desire. It never applies bounds,
stabilisation, rate limits, gang floors or budgets. The engine applies those once, after
every policy of a target, so a plugin author writes only the decision.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from metrics.sample import Sample


class PolicyParams(BaseModel):
    """Base for a policy's parameters: unknown keys are rejected, so a typo is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DesireKind(enum.Enum):
    REPLICAS = "replicas"
    IDLE = "idle"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Desire:
    """A policy's raw desire for one target at one tick.

    REPLICAS carries a count (not yet bounded). IDLE means every input was an idle window, so
    the target may go to its floor. UNKNOWN means an input was missing: the engine then
    allows scale-up from other policies but blocks any scale-down.
    """

    kind: DesireKind
    replicas: int | None
    reason: str

    @classmethod
    def scale_to(cls, replicas: int, reason: str) -> Desire:
        if replicas < 0:
            raise ValueError(f"desired replicas must be >= 0, got {replicas}")
        return cls(DesireKind.REPLICAS, int(replicas), reason)

    @classmethod
    def idle(cls, reason: str) -> Desire:
        return cls(DesireKind.IDLE, None, reason)

    @classmethod
    def unknown(cls, reason: str) -> Desire:
        return cls(DesireKind.UNKNOWN, None, reason)


@dataclass(frozen=True)
class PolicyContext:
    """Everything a policy may read for one target at one tick.

    `samples` maps each signal the policy declared to its sample. `current_replicas` is the
    live `/scale` value, and `ready_replicas` is None when readiness is not reported.
    `state` is the policy's own serialisable state from the previous tick of this target.
    """

    now: float
    target: str
    current_replicas: int
    samples: Mapping[str, Sample]
    ready_replicas: int | None = None
    interval_seconds: float = 15.0
    state: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyResult:
    """A desire plus the state the policy wants back on the next tick (JSON-serialisable)."""

    desire: Desire
    state: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Policy(Protocol):
    """A scaling policy. `name` is the registry name used in configuration."""

    name: ClassVar[str]
    Params: ClassVar[type[PolicyParams]]

    def __init__(self, params: PolicyParams) -> None: ...

    def signals(self) -> list[str]:
        """Return the catalog signal names this policy reads each tick."""
        ...

    def evaluate(self, context: PolicyContext) -> PolicyResult:
        """Return the raw desire for one target at one tick. Must not raise on missing data."""
        ...
