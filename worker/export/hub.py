"""Push an export folder (adapter, merged model or GGUF) to a Hugging Face Hub repository.

The token is an argument held in memory only: it is never written to a file, a config, a status file or a
log, and any error text is scrubbed of it before it is raised. Repositories are created private unless
the caller asks for a public one. The endpoint is huggingface_hub's (https://huggingface.co, or
$HF_ENDPOINT: the tests point it at a local stand-in of the upload API).
"""

from __future__ import annotations

import re
from pathlib import Path

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


class PushError(RuntimeError):
    """The push failed; the message says why (never containing the token)."""


def scrub(text: str, token: str) -> str:
    """`text` with the token (and anything shaped like a Hub token) replaced by ***."""
    if token:
        text = text.replace(token, "***")
    return re.sub(r"hf_[A-Za-z0-9]{8,}", "***", text)


def push_folder(folder: Path, repo_id: str, token: str, *, private: bool = True, message: str = "") -> str:
    """Upload every file of `folder` to model repo `repo_id` (created if missing); return the commit URL."""
    if not REPO_ID.match(repo_id):
        raise PushError(f"{repo_id!r} is not a Hub repo id; use OWNER/NAME (letters, digits, . _ -)")
    if not token:
        raise PushError("no Hub token: set HF_TOKEN (a write token from huggingface.co/settings/tokens)")
    files = [p for p in sorted(Path(folder).iterdir()) if p.is_file() and not p.is_symlink()]
    if not files:
        raise PushError(f"{folder} holds no files to push")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            commit_message=message or f"Tuneboard export: {Path(folder).name}",
            allow_patterns=[p.name for p in files],
        )
    except Exception as exc:  # every huggingface_hub / HTTP error, reported without the token
        raise PushError(f"pushing to {repo_id} failed: {scrub(str(exc), token)}") from None
    return str(getattr(info, "commit_url", info))
