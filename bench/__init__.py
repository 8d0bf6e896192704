"""Benchmarks and real-size runs (see bench/README.md)."""
