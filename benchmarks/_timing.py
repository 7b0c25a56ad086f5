"""The benchmarks' timing helpers, which live in the package (`mps_inductor_ext.timing`)."""

from mps_inductor_ext.timing import device_timer, median_seconds

__all__ = ["device_timer", "median_seconds"]
