"""raddist: evaluate vision foundation models on radiology benchmarks, at study scale, on Ray."""

__version__ = "0.1.0"
