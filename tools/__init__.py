"""Maintenance scripts of the repository (not part of the pipeline; nothing imports them at run time)."""
