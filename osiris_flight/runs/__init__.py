"""The run directory: manifest, plan, events, metrics, status and the journal a resume reads."""
