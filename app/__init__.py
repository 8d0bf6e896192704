"""Tuneboard's web process: FastAPI app, storage, scheduler. Never imports the training stack."""
