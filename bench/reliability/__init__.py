"""Reliability benchmarks: bad inputs and images, first start, soak, builds, shadow checks."""
