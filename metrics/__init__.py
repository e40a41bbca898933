"""Signal sources: metric sources, the signal catalog and engine presets."""

from metrics.sample import Sample, SampleKind, SignalRequest

__all__ = ["Sample", "SampleKind", "SignalRequest"]
