"""Tuneboard's training side. `contract.config`, `contract.catalog` and `contract.protocol` are torch-free."""
