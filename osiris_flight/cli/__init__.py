"""Command-line entry points: ``osiris-flight`` and the two daemons."""
