"""Policies, which decide a number of replicas: the policy contract, the registry and built-ins."""

from policies.base import Desire, DesireKind, Policy, PolicyContext, PolicyParams, PolicyResult

__all__ = ["Desire", "DesireKind", "Policy", "PolicyContext", "PolicyParams", "PolicyResult"]
