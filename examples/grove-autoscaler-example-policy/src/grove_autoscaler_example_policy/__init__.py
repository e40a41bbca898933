"""Example third-party scaling policy for grove-autoscaler."""

from grove_autoscaler_example_policy.step import StepParams, StepPolicy

__all__ = ["StepParams", "StepPolicy"]
