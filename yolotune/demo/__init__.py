"""Bundled demo inputs (a sample compression plan)."""
