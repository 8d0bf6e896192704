"""Tuneboard's training side. `worker.config`, `worker.catalog` and `worker.protocol` are torch-free."""
