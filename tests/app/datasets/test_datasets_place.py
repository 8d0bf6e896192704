"""Placing a staged upload under DATA_DIR/datasets/<id>: content-addressed, atomic, and safe when several
uploads of the same bytes land at once (PostgreSQL does not serialise them as SQLite's write lock does)."""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

from app.datasets.service import DATA_FILE, _place
from app.settings import Settings

ROWS = '{"text": "hello"}\n' * 200


def _staged(settings: Settings) -> Path:
    settings.datasets_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=settings.datasets_dir))
    (staging / DATA_FILE).write_text(ROWS, encoding="utf-8")
    return staging


def test_a_directory_left_without_data_by_a_crash_is_replaced(settings: Settings) -> None:
    final = settings.datasets_dir / "abc123"
    final.mkdir(parents=True)
    (final / "partial.tmp").write_text("half a file", encoding="utf-8")
    staging = _staged(settings)
    _place(settings, staging, "abc123")
    assert (final / DATA_FILE).read_text(encoding="utf-8") == ROWS
    assert not (final / "partial.tmp").exists()
    assert sorted(p.name for p in settings.datasets_dir.iterdir()) == ["abc123"]  # nothing set aside remains


def test_known_bytes_keep_the_copy_already_in_place(settings: Settings) -> None:
    first = _staged(settings)
    _place(settings, first, "abc123")
    placed = (settings.datasets_dir / "abc123" / DATA_FILE).stat().st_ino
    second = _staged(settings)
    _place(settings, second, "abc123")
    assert second.is_dir()  # left for the caller to remove; the stored copy was not touched
    assert (settings.datasets_dir / "abc123" / DATA_FILE).stat().st_ino == placed


def test_concurrent_placements_of_the_same_id_never_fail_or_lose_the_file(settings: Settings) -> None:
    """Many rounds of 6 threads placing the same id at once, each round starting from a crash leftover, so
    the rename, the 'already there' check and the clearing of the leftover interleave. The old code deleted
    the directory another thread had just renamed into place and then failed with ENOTEMPTY."""
    threads_per_round, rounds = 6, 60
    errors: list[BaseException] = []
    for round_no in range(rounds):
        dataset_id = f"id{round_no}"
        leftover = settings.datasets_dir / dataset_id
        leftover.mkdir(parents=True)
        (leftover / "partial.tmp").write_text("x", encoding="utf-8")
        stagings = [_staged(settings) for _ in range(threads_per_round)]
        barrier = threading.Barrier(threads_per_round)

        def place(staging: Path, dataset_id: str = dataset_id, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                _place(settings, staging, dataset_id)
            except BaseException as exc:  # collected: an exception in a thread would otherwise be lost
                errors.append(exc)

        workers = [threading.Thread(target=place, args=(s,)) for s in stagings]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert errors == [], f"round {round_no}: {errors!r}"
        assert (leftover / DATA_FILE).read_text(encoding="utf-8") == ROWS
        assert not (leftover / "partial.tmp").exists()
        for s in stagings:  # what store_upload does after _place
            if s.exists():
                assert (s / DATA_FILE).is_file()
                shutil.rmtree(s)
    assert not [p.name for p in settings.datasets_dir.iterdir() if p.name.startswith(".")]
