"""flopsweep: what does this model cost? FLOPs, size, memory and timings of many configurations at once."""

__version__ = "0.1.0"
