"""One facade for what the engine reports (events and metrics), with pluggable sinks."""
