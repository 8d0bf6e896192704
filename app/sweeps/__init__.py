"""Sweeps: one job's config over a grid of values for one or two fields, queued as a group of jobs."""
