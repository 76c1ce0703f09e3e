"""osiris-flight: a streaming, distributed execution engine for Osiris OML pipelines."""

__version__ = "0.1.0"
