"""Run management: job.notes, job.archived_at, job.method (copied from the config), the job_tag table, and
indexes for the jobs list's filters.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JOB_INDEXES = (
    ("ix_job_list_status", ["status", "created_at", "id"]),
    ("ix_job_list_created", ["created_at", "id"]),
    ("ix_job_list_model", ["model_name", "created_at"]),
    ("ix_job_list_archived", ["archived_at", "created_at", "id"]),
    ("ix_job_list_method", ["method", "created_at"]),
)


def upgrade() -> None:
    op.add_column("job", sa.Column("notes", sa.Text(), nullable=False, server_default=""))
    op.add_column("job", sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("job", sa.Column("method", sa.String(16), nullable=False, server_default="sft"))
    # existing runs: the method their stored config names (configs from before methods are sft)
    job = sa.table("job", sa.column("config", sa.JSON()), sa.column("method", sa.String(16)))
    named = job.c.config["method"].as_string()
    op.execute(job.update().where(named.is_not(None)).values(method=sa.func.substr(named, 1, 16)))
    op.create_table(
        "job_tag",
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("job.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("tag", sa.String(32), primary_key=True),
    )
    op.create_index("ix_job_tag", "job_tag", ["tag", "job_id"])
    for name, columns in _JOB_INDEXES:
        op.create_index(name, "job", columns)


def downgrade() -> None:
    for name, _columns in reversed(_JOB_INDEXES):
        op.drop_index(name, table_name="job")
    op.drop_index("ix_job_tag", table_name="job_tag")
    op.drop_table("job_tag")
    with op.batch_alter_table("job") as batch:
        batch.drop_column("method")
        batch.drop_column("archived_at")
        batch.drop_column("notes")
