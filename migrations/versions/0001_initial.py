"""Initial schema: job, job_event, metric.

Written by hand to match app/models.py at the time; later model changes need a new migration
(tests/app/test_schema.py fails until there is one). Values are frozen here on purpose: a migration
must not change meaning when application code changes later.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATUSES = ("queued", "starting", "running", "cancelling", "succeeded", "failed", "cancelled")


def upgrade() -> None:
    op.create_table(
        "job",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("config_text", sa.Text(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("model_name", sa.String(512), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("gpus_requested", sa.Integer(), nullable=False),
        sa.Column("assigned_gpus", sa.String(128), nullable=True),
        sa.Column("launcher", sa.String(16), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("external_id", sa.String(256), nullable=True),
        sa.Column("run_dir", sa.String(1024), nullable=True),
        sa.Column("token_hash", sa.String(128), nullable=True),
        sa.Column("parent_job_id", sa.Integer(), sa.ForeignKey("job.id", ondelete="SET NULL"), nullable=True),
        sa.Column("group_id", sa.String(64), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("starting_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("running_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancelling_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("stderr_tail", sa.Text(), nullable=True),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("last_step", sa.Integer(), nullable=False),
        sa.Column("total_steps", sa.Integer(), nullable=True),
        sa.Column("last_loss", sa.Float(), nullable=True),
        sa.Column("best_eval_loss", sa.Float(), nullable=True),
        sa.Column("tokens_per_second", sa.Float(), nullable=True),
        sa.Column("peak_vram_gb", sa.Float(), nullable=True),
        sa.Column("eta_seconds", sa.Float(), nullable=True),
        sa.Column("adapter_path", sa.String(1024), nullable=True),
        sa.CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in _STATUSES) + ")", name="ck_job_status"
        ),
        sa.CheckConstraint("gpus_requested >= 0", name="ck_job_gpus_requested"),
    )
    op.create_index("ix_job_queue", "job", ["status", "priority", "id"])
    op.create_index("ix_job_group_id", "job", ["group_id"])

    op.create_table(
        "job_event",
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("job.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sqlite_with_rowid=False,
    )

    op.create_table(
        "metric",
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("job.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("step", sa.Integer(), primary_key=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("nonfinite", sa.String(8), nullable=True),
        sa.Column("ts", sa.Float(), nullable=False),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("metric")
    op.drop_table("job_event")
    op.drop_index("ix_job_group_id", table_name="job")
    op.drop_index("ix_job_queue", table_name="job")
    op.drop_table("job")
