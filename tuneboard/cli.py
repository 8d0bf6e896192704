"""The `tuneboard` command: serve the dashboard, migrate its database, train locally, talk to a server.

Errors print one plain line (no traceback) and exit non-zero. Nothing here imports torch at import
time: `tuneboard train` imports the training pipeline only after the config has been validated.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from tuneboard.export_cmd import export_command
from tuneboard.import_config import import_config_command

DEFAULT_SERVER = "http://127.0.0.1:8000"
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})

app = typer.Typer(
    name="tuneboard",
    help="Launch, watch and compare QLoRA fine-tunes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")
auth_app = typer.Typer(
    help="The dashboard password and API tokens (needed to serve beyond 127.0.0.1).", no_args_is_help=True
)
app.add_typer(auth_app, name="auth")


class CliError(Exception):
    """A failure to report to the user as one plain line."""


ServerOption = Annotated[
    str,
    typer.Option(
        "--server", envvar="TUNEBOARD_SERVER", help="URL of a running `tuneboard serve`.", show_default=True
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="TUNEBOARD_TOKEN",
        help="API token for a server with auth on (from `tuneboard auth create-token NAME`).",
        show_default=False,
    ),
]
DataDirOption = Annotated[Path | None, typer.Option(help="The server's data directory (holds auth.json).")]


def _settings(**overrides: Any) -> Any:
    from app.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (the only binds allowed without auth)."""
    from app.auth.store import is_loopback as _is_loopback

    return _is_loopback(host)


def _auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to bind (beyond loopback only with a password or token).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="SQLite file, run directories, uploads.")] = None,
) -> None:
    """Start the dashboard (migrates the database first; TUNEBOARD_PASSWORD, if set, becomes the password)."""
    from app.auth import UnprotectedBindError, refuse_unprotected_bind
    from app.auth.store import AuthError, load_auth, set_password

    settings = _settings(host=host, port=port, data_dir=data_dir)
    try:
        # containers pass the password in the environment (docker-compose.yml): store its hash on start
        env_password = os.environ.get("TUNEBOARD_PASSWORD")
        if env_password and not load_auth(settings.data_dir).verify_password(env_password):
            set_password(settings.data_dir, env_password)
        refuse_unprotected_bind(settings)
    except (UnprotectedBindError, AuthError) as exc:
        raise CliError(str(exc)) from None
    import uvicorn

    from app.main import create_app

    typer.echo(f"Tuneboard on http://{settings.host}:{settings.port}  (data: {settings.data_dir})")
    uvicorn.run(create_app(settings), **uvicorn_options(settings))


def uvicorn_options(settings: Any) -> dict[str, Any]:
    """uvicorn.run() arguments: forwarded headers are believed only from settings.trusted_proxies."""
    options: dict[str, Any] = {"host": settings.host, "port": settings.port, "log_level": "info"}
    # uvicorn believes X-Forwarded-For/-Proto from 127.0.0.1 by default; with an `ssh -L` tunnel every client
    # is 127.0.0.1, so anyone could claim any address and scheme
    options["proxy_headers"] = bool(settings.trusted_proxies)
    if settings.trusted_proxies:
        options["forwarded_allow_ips"] = list(settings.trusted_proxies)
    return options


@db_app.command("upgrade")
def db_upgrade(
    data_dir: Annotated[Path | None, typer.Option(help="Data directory holding tuneboard.db.")] = None,
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy URL (overrides --data-dir).")] = None,
) -> None:
    """Apply the database migrations (serve does this at start too)."""
    from sqlalchemy.engine import make_url

    from app.migrate import current_revision, upgrade

    settings = _settings(data_dir=data_dir, database_url=database_url)
    url = settings.sqlalchemy_url
    try:
        upgrade(url)
    except Exception as exc:  # noqa: BLE001 - any driver error becomes one readable line
        raise CliError(
            f"cannot migrate {make_url(url).render_as_string(hide_password=True)}: {exc}"
        ) from None
    shown = make_url(url).render_as_string(hide_password=True)
    typer.echo(f"database at revision {current_revision(url)}: {shown}")


def _auth_dir(data_dir: Path | None) -> Path:
    settings = _settings(data_dir=data_dir)
    return Path(settings.data_dir)


@auth_app.command("set-password")
def auth_set_password(data_dir: DataDirOption = None) -> None:
    """Set the dashboard password (prompts; scripts may set TUNEBOARD_PASSWORD). Logs every browser out."""
    from app.auth.store import AuthError, set_password

    password = os.environ.get("TUNEBOARD_PASSWORD")
    if not password:
        if not sys.stdin.isatty():
            raise CliError("no terminal to prompt on: set TUNEBOARD_PASSWORD in the environment instead")
        password = typer.prompt("New password", hide_input=True, confirmation_prompt=True)
    directory = _auth_dir(data_dir)
    try:
        set_password(directory, password)
    except AuthError as exc:
        raise CliError(str(exc)) from None
    typer.echo(f"password set in {directory / 'auth.json'}; browsers must log in again")


@auth_app.command("create-token")
def auth_create_token(
    name: Annotated[str, typer.Argument(help="A name to recognise and revoke it by, e.g. laptop-cli.")],
    data_dir: DataDirOption = None,
) -> None:
    """Create an API token for scripts and the CLI; it is printed once and only its hash is kept."""
    from app.auth.store import AuthError, create_token

    try:
        token = create_token(_auth_dir(data_dir), name)
    except AuthError as exc:
        raise CliError(str(exc)) from None
    typer.echo(token)
    typer.echo(
        f"token {name!r} created; it is shown only this once. Use it with --token or TUNEBOARD_TOKEN, "
        "or as 'Authorization: Bearer <token>'",
        err=True,
    )


@auth_app.command("list-tokens")
def auth_list_tokens(data_dir: DataDirOption = None) -> None:
    """List API tokens by name and creation time (the tokens themselves are not stored)."""
    from app.auth.store import AuthError, list_tokens

    try:
        tokens = list_tokens(_auth_dir(data_dir))
    except AuthError as exc:
        raise CliError(str(exc)) from None
    if not tokens:
        typer.echo("no API tokens; create one with: tuneboard auth create-token NAME")
        return
    typer.echo(f"{'NAME':<24}  CREATED")
    for t in tokens:
        typer.echo(f"{t.name:<24}  {t.created_at}")


@auth_app.command("revoke-token")
def auth_revoke_token(
    name: Annotated[str, typer.Argument(help="Name of the token to revoke.")], data_dir: DataDirOption = None
) -> None:
    """Revoke an API token: requests that send it are refused from now on."""
    from app.auth.store import AuthError, revoke_token

    try:
        revoke_token(_auth_dir(data_dir), name)
    except AuthError as exc:
        raise CliError(str(exc)) from None
    typer.echo(f"token {name!r} revoked")


def _config_problems_line(problems: dict[str, str]) -> str:
    return "invalid job config: " + "; ".join(f"{k or '(config)'}: {v}" for k, v in problems.items())


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="Job config (YAML or JSON).")],
    run_dir: Annotated[Path | None, typer.Option(help="Where checkpoints and the adapter go.")] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from the last complete checkpoint in --run-dir.")
    ] = False,
) -> None:
    """Train in the foreground without a server (progress bar on the terminal)."""
    from contract.config import ConfigError, load_config_file

    try:
        load_config_file(config)
    except ConfigError as exc:
        raise CliError(_config_problems_line(exc.problems)) from None
    if resume and run_dir is None:
        raise CliError("--resume needs --run-dir: the directory whose checkpoints to continue from")
    try:
        from worker.train.run import run_standalone
    except ImportError as exc:
        raise CliError(
            f"the training side is not available ({exc}); install it with: pip install 'tuneboard[train]'"
        ) from None
    code = run_standalone(config, run_dir=run_dir, resume=resume)
    raise typer.Exit(int(code))


# LLaMA-Factory / Axolotl YAML → our config (tuneboard/import_config.py)
app.command("import-config")(import_config_command)
app.command("export")(export_command)  # merged / GGUF / GGUF LoRA exports: tuneboard/export_cmd.py


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False
)
def bench(ctx: typer.Context) -> None:
    """GPU benchmark: the seed recipe vs Tuneboard's training path (runs `python -m bench.speed ARGS`)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    if not (root / "bench" / "speed.py").is_file():
        raise CliError("the benchmarks live in the source checkout (bench/); run this from a git clone")
    code = subprocess.call([sys.executable, "-m", "bench.speed", *ctx.args], cwd=root)
    raise typer.Exit(code)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    if isinstance(body, dict):
        if "problems" in body:
            return _config_problems_line(body["problems"])
        detail = body.get("detail")
        if isinstance(detail, str):
            return detail
        return json.dumps(detail)
    return str(body)


def _call(method: str, server: str, path: str, **kwargs: Any) -> httpx.Response:
    url = server.rstrip("/") + path
    try:
        response = httpx.request(method, url, timeout=httpx.Timeout(30.0), **kwargs)
    except httpx.ConnectError:
        raise CliError(
            f"cannot reach Tuneboard at {server}: is `tuneboard serve` running? (or pass --server)"
        ) from None
    except httpx.HTTPError as exc:
        raise CliError(f"request to {url} failed: {exc}") from None
    if response.status_code >= 400:
        raise CliError(f"{response.status_code}: {_detail(response)}")
    return response


@app.command()
def submit(
    config: Annotated[Path, typer.Argument(help="Job config (YAML or JSON).")],
    server: ServerOption = DEFAULT_SERVER,
    wait: Annotated[bool, typer.Option(help="Follow the job with a progress bar until it ends.")] = False,
    token: TokenOption = None,
) -> None:
    """Queue a job on a running server."""
    try:
        text = config.read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {config}: {exc.strerror}") from None
    content_type = "application/json" if config.suffix.lower() == ".json" else "application/yaml"
    created = _call(
        "POST",
        server,
        "/api/jobs",
        content=text.encode(),
        headers={"Content-Type": content_type, **_auth_headers(token)},
    )
    job_id = created.json()["id"]
    typer.echo(f"job {job_id} queued: {server.rstrip('/')}/jobs/{job_id}")
    if not wait:
        return
    final = follow_job(server, job_id, token=token)
    status = final.get("status")
    if status == "succeeded":
        typer.echo(f"job {job_id} succeeded; download the adapter with: tuneboard download {job_id}")
        return
    reason = final.get("failure_reason") or "no reason given"
    raise CliError(f"job {job_id} {status}: {reason}")


def iter_sse(lines: Iterable[str]) -> Iterator[tuple[str, str, str | None]]:
    """(event, data, id) for each message of a text/event-stream."""
    event: str = "message"
    data: list[str] = []
    ident: str | None = None
    for line in lines:
        if line == "":
            if data:
                yield event, "\n".join(data), ident
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            ident = value


def follow_job(server: str, job_id: int, token: str | None = None) -> dict[str, Any]:
    """Show a progress bar fed by the job's SSE stream; return the final summary."""
    from tqdm import tqdm

    url = f"{server.rstrip('/')}/api/jobs/{job_id}/stream"
    last_id: str | None = None
    summary: dict[str, Any] = {}
    bar = tqdm(total=None, unit="step", desc=f"job {job_id}", dynamic_ncols=True)
    try:
        while True:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            headers.update(_auth_headers(token))
            try:
                with httpx.stream("GET", url, headers=headers, timeout=httpx.Timeout(10.0, read=120.0)) as r:
                    if r.status_code >= 400:
                        r.read()
                        raise CliError(f"{r.status_code}: {_detail(r)}")
                    for event, data, ident in iter_sse(r.iter_lines()):
                        last_id = ident or last_id
                        if event == "job":
                            summary = json.loads(data)
                            _update_bar(bar, summary)
                        elif event == "end":
                            return summary
            except httpx.ConnectError:
                raise CliError(f"lost the connection to {server} while following job {job_id}") from None
            except httpx.ReadTimeout:
                pass  # reconnect below with Last-Event-ID
            if summary.get("status") in TERMINAL_STATUSES:
                return summary
            time.sleep(1.0)  # the server closed the stream at its lifetime cap: reconnect and resume
    finally:
        bar.close()


def _update_bar(bar: Any, summary: dict[str, Any]) -> None:
    total = summary.get("total_steps")
    if total and bar.total != total:
        bar.total = total
    bar.n = summary.get("last_step") or 0
    postfix = {"status": summary.get("status")}
    if summary.get("last_loss") is not None:
        postfix["loss"] = f"{summary['last_loss']:.4f}"
    bar.set_postfix(postfix, refresh=False)
    bar.refresh()


@app.command("ls")
def list_jobs(
    server: ServerOption = DEFAULT_SERVER,
    status: Annotated[str | None, typer.Option(help="Only these statuses (comma-separated).")] = None,
    token: TokenOption = None,
) -> None:
    """List jobs, newest first."""
    params = {"status": status} if status else {}
    jobs = _call("GET", server, "/api/jobs", params=params, headers=_auth_headers(token)).json()
    if not jobs:
        typer.echo("no jobs yet; submit one with: tuneboard submit CONFIG")
        return
    typer.echo(f"{'ID':>5}  {'STATUS':<10}  {'STEP':>11}  {'LOSS':>8}  NAME")
    for job in jobs:
        step = f"{job['last_step']}/{job['total_steps']}" if job.get("total_steps") else str(job["last_step"])
        loss = f"{job['last_loss']:.4f}" if job.get("last_loss") is not None else "-"
        typer.echo(f"{job['id']:>5}  {job['status']:<10}  {step:>11}  {loss:>8}  {job['name']}")


@app.command()
def cancel(
    job_id: Annotated[int, typer.Argument(help="Job id.")],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
) -> None:
    """Cancel a job (a running one saves a checkpoint first)."""
    job = _call("POST", server, f"/api/jobs/{job_id}/cancel", headers=_auth_headers(token)).json()
    typer.echo(f"job {job_id} {job['status']}")


@app.command()
def download(
    job_id: Annotated[int, typer.Argument(help="Job id.")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Zip file to write.")] = None,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
) -> None:
    """Download a job's adapter as a zip."""
    target = output or Path(f"tuneboard-job-{job_id}-adapter.zip")
    url = f"{server.rstrip('/')}/api/jobs/{job_id}/adapter"
    partial = target.with_name(target.name + ".part")
    try:
        with httpx.stream(
            "GET", url, headers=_auth_headers(token), timeout=httpx.Timeout(30.0, read=300.0)
        ) as r:
            if r.status_code >= 400:
                r.read()
                raise CliError(f"{r.status_code}: {_detail(r)}")
            with partial.open("wb") as fh:
                for chunk in r.iter_bytes():
                    fh.write(chunk)
        partial.replace(target)
    except httpx.ConnectError:
        raise CliError(
            f"cannot reach Tuneboard at {server}: is `tuneboard serve` running? (or pass --server)"
        ) from None
    except OSError as exc:
        raise CliError(f"cannot write {target}: {exc.strerror}") from None
    finally:
        partial.unlink(missing_ok=True)
    typer.echo(f"wrote {target} ({target.stat().st_size} bytes)")


def main() -> None:
    """Console entry point: run the CLI, turning known failures into one line on stderr."""
    try:
        app()
    except CliError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the promise is one plain line, never a traceback
        if os.environ.get("TUNEBOARD_DEBUG"):
            raise
        typer.echo(f"error: {type(exc).__name__}: {exc} (set TUNEBOARD_DEBUG=1 for the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
