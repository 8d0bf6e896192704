"""`tuneboard export JOB --format gguf --quant q4_k_m`: queue an export on a running server, follow it, and
optionally download its files, each checked against the sha256 the server computed, and push them to the
Hugging Face Hub from this machine (`--push-to OWNER/NAME`, private unless --public).

The Hub token is read from $HF_TOKEN (or asked for, hidden) and used in this process's memory only: it is
never sent to the Tuneboard server, written to a file or printed (worker/export/hub.py scrubs errors).
An export that already succeeded is reused unless --again.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

DEFAULT_SERVER = "http://127.0.0.1:8000"
POLL_S = 2.0


class ExportCliError(Exception):
    """One plain line for the user."""


def _request(method: str, server: str, path: str, token: str | None, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = server.rstrip("/") + path
    try:
        response = httpx.request(method, url, headers=headers, timeout=httpx.Timeout(30.0), **kwargs)
    except httpx.ConnectError:
        raise ExportCliError(f"cannot reach Tuneboard at {server}: is `tuneboard serve` running?") from None
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text[:300]
        raise ExportCliError(f"{response.status_code}: {detail}")
    return response


def download(server: str, token: str | None, file: dict[str, Any], dest: Path) -> Path:
    """Stream one export file to dest/, checking its size and sha256 against the listing; return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / Path(str(file["name"])).name
    partial = target.with_name(f".{target.name}.partial")
    digest = hashlib.sha256()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = server.rstrip("/") + str(file["download_url"])
    try:
        with httpx.stream("GET", url, headers=headers, timeout=httpx.Timeout(60.0)) as response:
            if response.status_code >= 400:
                raise ExportCliError(f"{response.status_code} downloading {file['name']}")
            with partial.open("wb") as fh:
                for chunk in response.iter_bytes():
                    fh.write(chunk)
                    digest.update(chunk)
        size = partial.stat().st_size
        if size != file["size"] or digest.hexdigest() != file["sha256"]:
            raise ExportCliError(
                f"{file['name']}: got {size} bytes with sha256 {digest.hexdigest()}, the server listed "
                f"{file['size']} bytes and {file['sha256']}; nothing was kept, download again"
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def push(folder: Path, repo_id: str, *, private: bool) -> str:
    """Push `folder` to the Hub with the token from $HF_TOKEN (or a hidden prompt); the commit URL."""
    from worker.export.hub import PushError, push_folder

    hub_token = os.environ.get("HF_TOKEN") or typer.prompt("Hugging Face write token", hide_input=True)
    try:
        return push_folder(folder, repo_id, hub_token, private=private)
    except PushError as exc:
        raise ExportCliError(str(exc)) from None


def export_command(
    job_id: Annotated[int, typer.Argument(help="The job to export (it must have succeeded).")],
    format: Annotated[str, typer.Option("--format", help="merged, gguf or gguf-lora.")] = "gguf",
    quant: Annotated[
        str | None, typer.Option(help="gguf: f16, bf16, q8_0 or q4_k_m (default q4_k_m).")
    ] = None,
    base: Annotated[str, typer.Option(help="auto, dequantized or full (4-bit runs).")] = "auto",
    wait: Annotated[bool, typer.Option(help="Follow the export until it ends.")] = True,
    download_to: Annotated[
        Path | None, typer.Option("--download", help="Folder to download the files into (needs --wait).")
    ] = None,
    push_to: Annotated[
        str | None, typer.Option("--push-to", help="Hub repo OWNER/NAME to push the downloaded files to.")
    ] = None,
    public: Annotated[bool, typer.Option(help="Create the Hub repo public (default: private).")] = False,
    again: Annotated[bool, typer.Option(help="Export again even if this export already succeeded.")] = False,
    server: Annotated[str, typer.Option("--server", envvar="TUNEBOARD_SERVER")] = DEFAULT_SERVER,
    token: Annotated[
        str | None, typer.Option("--token", envvar="TUNEBOARD_TOKEN", show_default=False)
    ] = None,
) -> None:
    """Export a finished job (merged model, GGUF, GGUF LoRA); each export is checked against the adapter."""
    from contract.tasks import DEFAULT_QUANT, ExportRequestError, export_name

    try:
        if push_to and download_to is None:
            raise ExportCliError("--push-to pushes the downloaded files: pass --download FOLDER too")
        try:
            name = export_name(format, quant or DEFAULT_QUANT.get(format))
        except ExportRequestError as exc:
            raise ExportCliError(str(exc)) from None
        current = _request("GET", server, f"/api/jobs/{job_id}/exports/{name}", token).json()
        if again or current["state"] != "succeeded":
            body: dict[str, Any] = {"format": format, "base": base, "quant": quant or DEFAULT_QUANT[format]}
            _request("POST", server, f"/api/jobs/{job_id}/exports", token, json=body)
            typer.echo(f"job {job_id}: export {name} queued")
        else:
            typer.echo(f"job {job_id}: export {name} already succeeded (--again to redo it)")
        if not wait:
            return
        last = ""
        while True:
            state = _request("GET", server, f"/api/jobs/{job_id}/exports/{name}", token).json()
            line = f"{state['state']}: {state.get('stage', '')} {state.get('message', '')}".strip()
            if line != last:
                typer.echo(line)
                last = line
            if state["state"] not in ("starting", "running"):
                break
            time.sleep(POLL_S)
        if state["state"] != "succeeded":
            raise ExportCliError(f"export {name} {state['state']}: {state.get('message', '')}")
        for file in state["files"]:
            typer.echo(f"  {file['name']}  {file['size']} bytes  sha256 {file['sha256']}")
            if download_to is not None:
                typer.echo(f"  -> {download(server, token, file, download_to)}")
        if push_to and download_to is not None:
            typer.echo(f"pushed: {push(download_to, push_to, private=not public)}")
    except ExportCliError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
