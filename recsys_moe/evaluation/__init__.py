"""Offline evaluation: vectorised metrics (and, later, reports)."""
