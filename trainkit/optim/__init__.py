"""Optimizers by name (and, later, schedules and batch-size scaling)."""
