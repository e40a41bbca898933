"""The policy registry: built-in policies plus third-party ones from entry points.

A plugin distribution exposes its policy class in the entry-point group
`grove_autoscaler.policies`, under the policy's own `name`:

    [project.entry-points."grove_autoscaler.policies"]
    my-policy = "my_package.policy:MyPolicy"

A plugin that fails to import, or whose class does not satisfy the `Policy` protocol, is
logged with its name and error and skipped, so one broken plugin cannot stop the autoscaler.
Built-in policies load the same way, so a broken built-in module costs only that policy
(the test suite checks that every built-in loads).
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import re
from typing import Any, Iterable, Mapping

from pydantic import ValidationError

from policies.base import Policy, PolicyParams

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "grove_autoscaler.policies"
POLICY_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9._-]*$")
# Built-in policies as entry-point values ("module:class"), registered under their names.
BUILTIN_POLICIES: dict[str, str] = {
    "target": "policies.target:TargetPolicy",
    "latency-slo": "policies.latency_slo:LatencySloPolicy",
    "kv-cache": "policies.kv_cache:KvCachePolicy",
    "kv-spare": "policies.kv_spare:KvSparePolicy",
    "queue": "policies.queue:QueuePolicy",
    "throughput": "policies.throughput:ThroughputPolicy",
    "sla-planner": "policies.sla_planner:SlaPlannerPolicy",
    "dynamo-compatible": "policies.dynamo_compatible:DynamoCompatiblePolicy",
}


class PolicyError(Exception):
    """An unknown policy name, a class that is not a policy, or a policy that failed to start."""


def check_policy_class(candidate: object) -> type[Policy]:
    """Return `candidate` if it is a class satisfying the Policy protocol; raise PolicyError naming what is missing."""
    if not isinstance(candidate, type):
        raise PolicyError(f"{candidate!r} is a {type(candidate).__name__}, not a policy class")
    label = f"{candidate.__module__}.{candidate.__qualname__}"

    name = getattr(candidate, "name", None)
    if not isinstance(name, str) or not POLICY_NAME_PATTERN.match(name):
        raise PolicyError(
            f"{label}: class attribute name must be a lowercase policy name such as 'my-policy', got {name!r}"
        )
    params = getattr(candidate, "Params", None)
    if not (isinstance(params, type) and issubclass(params, PolicyParams)):
        raise PolicyError(f"{label}: class attribute Params must be a subclass of policies.base.PolicyParams, got {params!r}")
    if params.model_config.get("extra") != "forbid":
        raise PolicyError(f"{label}: Params must reject unknown keys (extra='forbid') so that a typo is an error")
    for method in ("signals", "evaluate"):
        if not callable(getattr(candidate, method, None)):
            raise PolicyError(f"{label}: method {method}() is missing")
    return candidate


class PolicyRegistry:
    """Policy classes by name, and the factory that validates parameters and creates policies."""

    def __init__(self) -> None:
        self._classes: dict[str, type[Policy]] = {}

    def register(self, cls: type) -> type:
        """Add a policy class under its `name`; return it, so this also works as a decorator.

        Raise PolicyError when the class does not satisfy the protocol or the name is taken.
        """
        policy_class = check_policy_class(cls)
        existing = self._classes.get(policy_class.name)
        if existing is not None and existing is not policy_class:
            raise PolicyError(
                f"policy name {policy_class.name!r} is already registered by "
                f"{existing.__module__}.{existing.__qualname__}"
            )
        self._classes[policy_class.name] = policy_class
        return cls

    def names(self) -> list[str]:
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def get(self, name: str) -> type[Policy]:
        """Return the class registered as `name`; raise PolicyError listing the known names."""
        try:
            return self._classes[name]
        except KeyError:
            raise PolicyError(f"unknown policy {name!r}; known policies: {', '.join(self.names())}") from None

    def create(self, name: str, params: Mapping[str, Any] | None = None) -> Policy:
        """Validate `params` with the policy's Params model and return a new policy.

        A pydantic ValidationError propagates unchanged, so configuration errors can name the
        field path. Raise PolicyError for an unknown name or a policy that fails to start.
        """
        policy_class = self.get(name)
        if params is None:
            params = {}
        elif isinstance(params, Mapping):
            params = dict(params)
        validated = policy_class.Params.model_validate(params)
        try:
            policy = policy_class(validated)
            signals = policy.signals()
        except ValidationError:
            raise
        except Exception as error:
            raise PolicyError(f"policy {name!r} failed to start: {type(error).__name__}: {error}") from error

        if not isinstance(signals, list) or not all(isinstance(signal, str) for signal in signals):
            raise PolicyError(f"policy {name!r}: signals() must return a list of signal names, got {signals!r}")
        return policy


def load_registry(entry_points: Iterable[importlib.metadata.EntryPoint] | None = None) -> PolicyRegistry:
    """Build a registry with the built-ins and every loadable plugin of `entry_points`.

    `entry_points` defaults to the group `grove_autoscaler.policies` of the installed
    distributions, read from sys.path at call time. Built-ins are registered first, so a
    plugin cannot replace one.
    """
    registry = PolicyRegistry()
    for name, value in BUILTIN_POLICIES.items():
        _register_plugin(registry, importlib.metadata.EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP))

    if entry_points is None:
        entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    for entry_point in entry_points:
        _register_plugin(registry, entry_point)
    return registry


def _register_plugin(registry: PolicyRegistry, entry_point: importlib.metadata.EntryPoint) -> None:
    try:
        loaded = entry_point.load()
    except Exception as error:
        logger.error(
            "skipped policy %s (%s): import failed: %s: %s",
            entry_point.name,
            entry_point.value,
            type(error).__name__,
            error,
        )
        return

    try:
        policy_class = check_policy_class(loaded)
        if policy_class.name != entry_point.name:
            raise PolicyError(
                f"the entry point is named {entry_point.name!r} but the class's name is {policy_class.name!r}; "
                "they must match because configuration refers to policies by name"
            )
        registry.register(policy_class)
    except PolicyError as error:
        logger.error("skipped policy %s (%s): %s", entry_point.name, entry_point.value, error)
        return
    logger.debug("loaded policy %s from %s", entry_point.name, entry_point.value)


@functools.cache
def default_registry() -> PolicyRegistry:
    """Return the process-wide registry, built once on first use by `load_registry()`."""
    return load_registry()
