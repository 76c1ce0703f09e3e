"""The cluster: a pure scheduler state machine, and the coordinator and worker I/O loops around it."""
