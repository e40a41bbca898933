"""grove-autoscaler: multi-level autoscaling of Grove PodCliqueSets for LLM inference."""

__version__ = "0.1.0"
