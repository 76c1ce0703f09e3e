"""Running tasks in a worker process: a fused chain of operators over RowStreams (task_runner), and
the allocator settings the process starts with (allocator)."""
