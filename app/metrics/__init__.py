"""Metric storage: ingest from workers, downsampled queries, and the live SSE stream."""
