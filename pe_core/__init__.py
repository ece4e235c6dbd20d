"""privevo's Private Evolution engine: a pure library (no server, no clocks, no environment)."""

__version__ = "0.1.0"
