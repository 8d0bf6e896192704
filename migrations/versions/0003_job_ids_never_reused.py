"""Job ids are never handed out twice: SQLite's job table gets AUTOINCREMENT.

Without it SQLite gives a new row max(id) + 1, so the id of the newest job comes back once that row is
gone, and there is no counter to move above run directories a lost database left on disk
(app.db.keep_job_ids_above_run_dirs sets sqlite_sequence). PostgreSQL's serial sequence never goes
back already; nothing changes there.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _rebuild_job_table(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    # The copy keeps every row, index, check and foreign key (reflected); migrations run with SQLite's
    # foreign_keys off (migrations/env.py), so dropping the old table cascades nothing.
    with op.batch_alter_table(
        "job", recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
    ) as batch:
        del batch  # recreating is the change


def upgrade() -> None:
    _rebuild_job_table(autoincrement=True)


def downgrade() -> None:
    _rebuild_job_table(autoincrement=False)
