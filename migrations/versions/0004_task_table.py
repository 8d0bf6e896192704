"""Merged exports and try-the-adapter runs become rows the scheduler places: the task table.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# frozen here: a migration must not change when the status enum grows later
_STATUSES = "'queued', 'starting', 'running', 'cancelling', 'succeeded', 'failed', 'cancelled'"


def upgrade() -> None:
    op.create_table(
        "task",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("job.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("module", sa.String(256), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("run_dir", sa.String(1024), nullable=False),
        sa.Column("input_path", sa.String(1024), nullable=True),
        sa.Column("output_path", sa.String(1024), nullable=True),
        sa.Column("log_path", sa.String(1024), nullable=False),
        sa.Column("gpus_requested", sa.Integer(), nullable=False),
        sa.Column("assigned_gpus", sa.String(128), nullable=True),
        sa.Column("launcher", sa.String(16), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("timeout_s", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.CheckConstraint(f"status IN ({_STATUSES})", name="ck_task_status"),
        sa.CheckConstraint("gpus_requested >= 0", name="ck_task_gpus_requested"),
    )
    op.create_index("ix_task_queue", "task", ["status", "id"])
    op.create_index("ix_task_job_id", "task", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_task_job_id", table_name="task")
    op.drop_index("ix_task_queue", table_name="task")
    op.drop_table("task")
