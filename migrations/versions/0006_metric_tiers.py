"""Multi-resolution metric history: metric_bucket (min/max/last/count tiers) and metric_series summaries.

Existing runs are backfilled from their raw points (app/metrics/tiers.py), so their charts and job pages
read the tiers like new runs.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.orm import Session

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "metric_series",
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("job.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("nonfinite_points", sa.BigInteger(), nullable=False),
        sa.Column("first_step", sa.Integer(), nullable=False),
        sa.Column("last_step", sa.Integer(), nullable=False),
        sa.Column("last_value", sa.Float(), nullable=True),
        sa.Column("last_nonfinite", sa.String(8), nullable=True),
        sa.Column("min_value", sa.Float(), nullable=True),
        sa.Column("max_value", sa.Float(), nullable=True),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "metric_bucket",
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("job.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("tier", sa.Integer(), primary_key=True),
        sa.Column("bucket", sa.Integer(), primary_key=True),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("nonfinite_points", sa.Integer(), nullable=False),
        sa.Column("nonfinite_step", sa.Integer(), nullable=True),
        sa.Column("min_step", sa.Integer(), nullable=True),
        sa.Column("min_value", sa.Float(), nullable=True),
        sa.Column("max_step", sa.Integer(), nullable=True),
        sa.Column("max_value", sa.Float(), nullable=True),
        sa.Column("last_step", sa.Integer(), nullable=False),
        sa.Column("last_value", sa.Float(), nullable=True),
        sa.Column("last_nonfinite", sa.String(8), nullable=True),
        sqlite_with_rowid=False,
    )
    if op.get_context().as_sql:
        return  # offline SQL rendering: no rows to backfill from
    bind = op.get_bind()
    job_ids = [row[0] for row in bind.execute(sa.text("SELECT DISTINCT job_id FROM metric"))]
    if job_ids:
        from app.metrics.tiers import rebuild_job

        session = Session(bind=bind)
        for job_id in job_ids:
            rebuild_job(session, job_id=job_id)
        session.flush()


def downgrade() -> None:
    op.drop_table("metric_bucket")
    op.drop_table("metric_series")
