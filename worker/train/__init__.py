"""The training child: `python -m worker.train RUN_DIR`. Importing this package stays cheap (no torch)."""
