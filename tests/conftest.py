"""Shared test setup: no hub access, few threads (CI has 2 cores)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "2")
# Starlette's TestClient sends `Host: testserver`; the app serves only names it is reachable as
os.environ.setdefault("TUNEBOARD_ALLOWED_HOSTS", "testserver")
