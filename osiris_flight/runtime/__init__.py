"""Running one task: a fused chain of operators over RowStreams, in one worker process."""
