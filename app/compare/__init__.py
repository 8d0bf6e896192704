"""Comparing runs: overlaid curves, a config diff and a summary table for 2–8 jobs or a sweep group."""
