"""Data layer: RowStream, the per-worker batch store with spill, Flight transport of outputs."""
