"""Extractors, transforms and writers. Each declares a ComponentSpec: config schema, role, operator."""
