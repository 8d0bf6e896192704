"""Short worker-side tasks on a finished run: merged-model export and try-the-adapter generation.

Each runs as its own process (`python -m worker.tasks.merge RUN_DIR`, `python -m worker.tasks.generate
RUN_DIR ...`), never inside the web process. The file names and the refusal text both sides agree on are in
contract/tasks.py.
"""
