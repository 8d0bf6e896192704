"""ORM tables. Alembic migrations in migrations/ must match these (tests/app/test_schema.py checks)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.jobs.status import JobStatus, status_check_sql


def utcnow() -> datetime:
    return datetime.now(UTC)


def _config_method(context: Any) -> str:
    """Column default of job.method: the inserted config's `method`, or sft."""
    config = context.get_current_parameters().get("config") or {}
    method = config.get("method") if isinstance(config, dict) else None
    return str(method or "sft")[:16]


class Base(DeclarativeBase):
    pass


class Job(Base):
    """One fine-tune: its config as submitted, its lifecycle timestamps and a summary for the list page."""

    __tablename__ = "job"
    __table_args__ = (
        CheckConstraint(status_check_sql("status"), name="ck_job_status"),
        CheckConstraint("gpus_requested >= 0", name="ck_job_gpus_requested"),
        Index("ix_job_queue", "status", "priority", "id"),
        # the jobs list's filters and sorts (app/jobs/listing.py), fast at 10,000 runs (bench/jobs_list.py)
        Index("ix_job_list_status", "status", "created_at", "id"),
        Index("ix_job_list_created", "created_at", "id"),
        Index("ix_job_list_model", "model_name", "created_at"),
        Index("ix_job_list_archived", "archived_at", "created_at", "id"),
        Index("ix_job_list_method", "method", "created_at"),
        # ids are never reused (not even the newest one's after it is gone), and sqlite_sequence gives
        # start-up a counter to move above the run directories a lost database left behind (migration 0003)
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)

    # the text exactly as submitted (YAML or JSON) and the validated, defaults-filled form
    config_text: Mapped[str] = mapped_column(Text)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    model_name: Mapped[str] = mapped_column(String(512), default="")

    priority: Mapped[int] = mapped_column(Integer, default=0)
    gpus_requested: Mapped[int] = mapped_column(Integer, default=0)
    assigned_gpus: Mapped[str | None] = mapped_column(String(128), nullable=True)  # "0,1"; "" means CPU
    launcher: Mapped[str] = mapped_column(String(16), default="local")
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    external_id: Mapped[str | None] = mapped_column(String(256), nullable=True)  # e.g. a Ray job id
    run_dir: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    token_hash: Mapped[str | None] = mapped_column(String(128), nullable=True)  # sha256 of the job token

    parent_job_id: Mapped[int | None] = mapped_column(
        ForeignKey("job.id", ondelete="SET NULL"), nullable=True
    )  # clone-and-edit lineage
    group_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)  # sweep group
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # incremented on each start (resume)

    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    starting_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    running_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    cancelling_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)  # plain words
    stderr_tail: Mapped[str | None] = mapped_column(Text, nullable=True)

    # summary for the list page, maintained by ingest
    last_seq: Mapped[int] = mapped_column(Integer, default=0)  # highest event seq stored
    last_step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    best_eval_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    tokens_per_second: Mapped[float | None] = mapped_column(Float, nullable=True)
    peak_vram_gb: Mapped[float | None] = mapped_column(Float, nullable=True)
    eta_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    adapter_path: Mapped[str | None] = mapped_column(String(1024), nullable=True)  # relative to run_dir

    # run management (app/jobs/manage.py): free notes, and archived runs hidden from the default list
    notes: Mapped[str] = mapped_column(Text, default="", server_default="")
    # config's `method` (sft when it has none), copied at insert so the list filters on an indexed column
    method: Mapped[str] = mapped_column(String(16), default=_config_method, server_default="sft")
    archived_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class JobTag(Base):
    """One tag of one job (app/jobs/manage.py validates them); the list filters by tag through ix_job_tag."""

    __tablename__ = "job_tag"
    __table_args__ = (Index("ix_job_tag", "tag", "job_id"),)

    job_id: Mapped[int] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(32), primary_key=True)


class JobEvent(Base):
    """Every non-metric event a worker sent (status, log, preflight, checkpoint, guard, sample, ...)."""

    __tablename__ = "job_event"
    __table_args__ = ({"sqlite_with_rowid": False},)

    job_id: Mapped[int] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    step: Mapped[int] = mapped_column(Integer, default=0)
    kind: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    ts: Mapped[float] = mapped_column(Float)  # worker wall clock, seconds since the epoch


class MetricPoint(Base):
    """One value of one metric at one step. Narrow and keyed so a re-sent batch is a no-op."""

    __tablename__ = "metric"
    __table_args__ = ({"sqlite_with_rowid": False},)

    job_id: Mapped[int] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)  # NULL when not finite
    nonfinite: Mapped[str | None] = mapped_column(String(8), nullable=True)  # 'nan' | 'inf' | '-inf'
    ts: Mapped[float] = mapped_column(Float)


class MetricSeries(Base):
    """Per (job, key) summary kept by ingest: the page's latest values and best loss read it, never a scan."""

    __tablename__ = "metric_series"
    __table_args__ = ({"sqlite_with_rowid": False},)

    job_id: Mapped[int] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    points: Mapped[int] = mapped_column(BigInteger, default=0)
    nonfinite_points: Mapped[int] = mapped_column(BigInteger, default=0)
    first_step: Mapped[int] = mapped_column(Integer, default=0)
    last_step: Mapped[int] = mapped_column(Integer, default=0)  # the highest step stored
    last_value: Mapped[float | None] = mapped_column(Float, nullable=True)  # at last_step; NULL: not finite
    last_nonfinite: Mapped[str | None] = mapped_column(String(8), nullable=True)
    min_value: Mapped[float | None] = mapped_column(Float, nullable=True)  # lowest finite value
    max_value: Mapped[float | None] = mapped_column(Float, nullable=True)


class MetricBucket(Base):
    """min/max/last/count of one series over `width` consecutive steps (app/metrics/tiers.py).

    Tier t covers steps [bucket * width, (bucket + 1) * width) with width = TIER_WIDTHS[t - 1]; the min and
    max are over finite values only, non-finite points are counted and the first one's step kept, so a NaN
    or inf stays visible at every zoom.
    """

    __tablename__ = "metric_bucket"
    __table_args__ = ({"sqlite_with_rowid": False},)

    job_id: Mapped[int] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    tier: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)
    points: Mapped[int] = mapped_column(Integer, default=0)
    nonfinite_points: Mapped[int] = mapped_column(Integer, default=0)
    nonfinite_step: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the first non-finite one
    min_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    min_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_step: Mapped[int] = mapped_column(Integer, default=0)
    last_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_nonfinite: Mapped[str | None] = mapped_column(String(8), nullable=True)


class Dataset(Base):
    """An uploaded dataset, stored once under DATA_DIR/datasets/<id>/data.jsonl (content-addressed)."""

    __tablename__ = "dataset"
    __table_args__ = (UniqueConstraint("sha256", name="uq_dataset_sha256"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # a prefix of sha256; jobs say upload:<id>
    name: Mapped[str] = mapped_column(String(200), default="")
    filename: Mapped[str] = mapped_column(String(255), default="")  # as uploaded
    format: Mapped[str] = mapped_column(String(32))  # messages | prompt_completion | text
    rows: Mapped[int] = mapped_column(Integer, default=0)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)  # of the file as uploaded
    sha256: Mapped[str] = mapped_column(String(64))  # of the bytes as uploaded
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Task(Base):
    """Short work on a finished job (merged export, try-the-adapter) that the scheduler places like a job.

    Statuses are the job's (queued → starting → running → succeeded | failed | cancelled); a task holds
    `assigned_gpus` while active, so training claims and task claims never share a GPU.
    """

    __tablename__ = "task"
    __table_args__ = (
        CheckConstraint(status_check_sql("status"), name="ck_task_status"),
        CheckConstraint("gpus_requested >= 0", name="ck_task_gpus_requested"),
        Index("ix_task_queue", "status", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "merge" | "try"
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    # what runs: `python -m <module> <run_dir> <args...>`, written by the app only (never read from RUN_DIR)
    module: Mapped[str] = mapped_column(String(256))
    args: Mapped[list[str]] = mapped_column(JSON, default=list)
    run_dir: Mapped[str] = mapped_column(String(1024))
    input_path: Mapped[str | None] = mapped_column(String(1024), nullable=True)  # task input, DATA_DIR/tmp
    output_path: Mapped[str | None] = mapped_column(String(1024), nullable=True)  # stdout file, if kept
    log_path: Mapped[str] = mapped_column(String(1024))  # stderr (and stdout when not kept apart)

    gpus_requested: Mapped[int] = mapped_column(Integer, default=0)
    assigned_gpus: Mapped[str | None] = mapped_column(String(128), nullable=True)  # "0"; "" means CPU
    launcher: Mapped[str] = mapped_column(String(16), default="local")
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # the launcher's own id of the process when it has one (the Ray job's submission id); None: local
    external_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    timeout_s: Mapped[float] = mapped_column(Float)

    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)  # plain words
