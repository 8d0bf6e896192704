"""One typed settings object. Environment variables use the TUNEBOARD_ prefix (e.g. TUNEBOARD_DATA_DIR)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNEBOARD_", extra="ignore")

    data_dir: Path = Field(Path("tuneboard-data"), description="SQLite file, run directories, uploads.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite in data_dir.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    public_url: str | None = Field(
        None, description="URL workers use to reach the app; default from host/port."
    )

    # scheduler
    scheduler_enabled: bool = True
    gpu_slots: str | None = Field(None, description="Comma-separated GPU indices to use; default: discover.")
    cpu_slots: int = Field(1, ge=0, le=256, description="Concurrent CPU-only jobs.")
    gpu_reserve_after_s: float = Field(
        600.0,
        ge=0,
        description="A queued GPU job blocked this long reserves GPUs: smaller jobs behind it stop "
        "backfilling them (no starvation of multi-GPU jobs).",
    )
    scheduler_interval_s: float = Field(0.5, gt=0)
    heartbeat_timeout_s: float = Field(120.0, gt=0)
    app_pause_threshold_s: float = Field(
        10.0,
        gt=0,
        description="A gap this long between scheduler ticks means the app itself was away (stopped, "
        "suspended, its loop blocked): heartbeats are then measured from when it came back.",
    )
    cancel_grace_s: float = Field(30.0, gt=0, description="SIGTERM → SIGKILL grace for cancelled jobs.")
    launcher: str = Field("local", description="local | ray")
    worker_python: str | None = Field(None, description="Python for training processes; default: this one.")
    worker_module: str = Field(
        "worker.train",
        description="Module run as `python -m MODULE RUN_DIR` for each job (tests use a fake).",
    )

    # a POST to this URL when a job ends (app/scheduler/webhook.py); set by the operator, never by a job
    webhook_url: str | None = Field(
        None, description="http(s) URL that gets a JSON POST when a job succeeds, fails or is cancelled."
    )
    webhook_secret: str | None = Field(
        None, description="Signs each webhook body: X-Tuneboard-Signature: sha256=HMAC(secret, body)."
    )

    # Ray launcher (TUNEBOARD_LAUNCHER=ray; docs/cluster.md)
    ray_address: str | None = Field(
        None, description="Ray dashboard (Jobs API) URL, e.g. http://ray-head:8265 (launcher ray)."
    )
    ray_auth_token: str | None = Field(
        None, description="Token of a Ray cluster started with RAY_AUTH_MODE=token (a Bearer header)."
    )
    ray_worker_python: str = Field("python", description="Python with Tuneboard installed on the Ray nodes.")
    ray_remote_runs_dir: str | None = Field(
        None,
        description="Run directories on Ray nodes that do not share DATA_DIR with the app: the config "
        "travels in the job's runtime env and the worker uploads adapter and checkpoints back. Unset: "
        "the nodes see the app's DATA_DIR at the same path (shared storage).",
    )
    ray_stop_wait_s: int = Field(
        120, ge=1, description="RAY_JOB_STOP_WAIT_TIME_S: SIGTERM → SIGKILL wait when a Ray job is stopped."
    )
    ray_log_sync_s: float = Field(10.0, gt=0, description="How often a running Ray job's log is copied.")
    max_artifact_bytes: int = Field(
        8 * 1024**3, ge=1, description="Largest single file a remote worker may upload to its run directory."
    )

    # streaming
    sse_batch_interval_s: float = Field(0.25, gt=0)
    sse_ping_interval_s: float = Field(15.0, gt=0)
    sse_max_lifetime_s: float = Field(600.0, gt=0)

    # fault and soak tests (tests/faults, bench/soak.py): GET /api/_debug/runtime
    debug_endpoints: bool = Field(
        False, description="Serve /api/_debug/runtime (tasks, DB pool, RSS); tests only."
    )

    # limits
    max_upload_bytes: int = Field(200 * 1024 * 1024, ge=1)
    max_config_bytes: int = Field(256 * 1024, ge=1)
    max_events_per_batch: int = Field(5000, ge=1)

    # datasets (app/datasets)
    dataset_preview_timeout_s: float = Field(
        120.0, gt=0, description="Longest a dataset preview (tokenizer subprocess) may take."
    )
    dataset_checks_max_concurrent: int = Field(
        2, ge=1, le=64, description="Uploads checked at once (each takes a CPU core while it parses)."
    )
    dataset_check_queue_s: float = Field(
        30.0, gt=0, description="How long an upload waits for a check slot before a 503 with Retry-After."
    )
    dataset_roots: str | None = Field(
        None,
        description="Directories (separated by os.pathsep, ':' on Linux) a job's dataset.source may name "
        "files in; default: the data dir and the working directory. Uploads and presets are always allowed.",
    )

    # short worker-side tasks on finished runs (app/tasks): try-the-adapter generation, merged export
    task_gpus: str = Field(
        "",
        description="GPUs short tasks may use, e.g. '0' (one is placed, free of jobs); empty: CPU.",
    )
    try_timeout_s: float = Field(
        300.0, gt=0, description="A try-the-adapter generation is killed after this."
    )
    try_max_new_tokens: int = Field(256, ge=1, le=4096, description="Longest answer a try may ask for.")
    try_max_prompt_chars: int = Field(8000, ge=1, description="Longest prompt a try accepts.")
    merge_timeout_s: float = Field(3600.0, gt=0, description="A merged-model export is killed after this.")
    tasks_max_concurrent: int = Field(
        2, ge=1, le=64, description="Short tasks running at once over all jobs (each loads a model)."
    )

    # auth (app/auth): on when DATA_DIR/auth.json has a password or an API token, or when forced here
    auth_required: bool = Field(
        False, description="Require a login or API token even on loopback (auth.json must hold one)."
    )
    session_max_age_s: float = Field(7 * 24 * 3600, gt=0, description="How long a browser login lasts.")
    # the HTTP edge (app/auth/edge.py): which Host names are served, which proxies are believed
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Extra Host names served (comma-separated), besides 127.0.0.1, localhost, ::1, the bind "
        "host and the public_url host; '*' serves any (DNS rebinding then becomes possible).",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Addresses of reverse proxies whose X-Forwarded-For/-Proto are believed "
        "(comma-separated, '*' for any); empty: forwarded headers are ignored.",
    )

    @field_validator("allowed_hosts", "trusted_proxies", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list | tuple):
            return [str(v).strip().lower() for v in value if str(v).strip()]
        return value

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("TUNEBOARD_WEBHOOK_URL must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _absolute_data_dir(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        return self

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'tuneboard.db'}"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def datasets_dir(self) -> Path:
        """Uploaded datasets: <id>/data.jsonl (workers get it as TUNEBOARD_DATASETS_DIR)."""
        return self.data_dir / "datasets"

    @property
    def dataset_root_dirs(self) -> list[Path]:
        """The directories a job's dataset.source may name files in (resolved: symlinks followed)."""
        if self.dataset_roots is None or not self.dataset_roots.strip():
            return [self.data_dir, Path.cwd().resolve()]
        parts = [p.strip() for p in self.dataset_roots.split(os.pathsep) if p.strip()]
        return [Path(p).expanduser().resolve() for p in parts]

    @property
    def app_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
