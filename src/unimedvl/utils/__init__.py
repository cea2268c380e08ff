"""Small helpers every layer may use: atomic file writes, YAML and JSON readers with clear errors, number checks."""
