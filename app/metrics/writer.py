"""One writer thread for worker ingest: batches from every job group-committed in one transaction.

With a write transaction per POST, ten jobs reporting at once queued on SQLite's write lock (BEGIN
IMMEDIATE): p95 went from 23 ms to over a second. Here the request handlers only validate; the batches
they hand over are written by a single thread per database, which takes whatever has queued up (up to
GROUP_MAX_EVENTS events), stores each batch inside a SAVEPOINT of one transaction, commits once and only
then answers the waiting requests. So the acknowledgement guarantee is unchanged: a request is answered
200 only after the commit that stored its points, and a batch that fails (its job finished meanwhile, a
bad transition) is rolled back alone and answered with its own error, never taking the others down.
Idempotence is ingest_events' (seq <= job.last_seq is skipped), so a retried batch is stored once.

The thread starts on the first batch and exits after IDLE_EXIT_S without work.
"""

from __future__ import annotations

import logging
import threading
import weakref
from concurrent.futures import Future
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from app.metrics.ingest import (
    IngestError,
    IngestResult,
    ParsedEvent,
    authorize,
    check_accepting,
    ingest_events,
)
from app.models import Job

log = logging.getLogger(__name__)

GROUP_MAX_EVENTS = 20_000  # per transaction: bounds how long one commit keeps the others waiting
IDLE_EXIT_S = 2.0


@dataclass
class Batch:
    """One POST's validated events, waiting for the writer."""

    job_id: int
    authorization: str | None
    events: list[ParsedEvent]
    done: Future[IngestResult] = field(default_factory=Future)


class IngestWriter:
    """The single writer of one database (one per session factory)."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory
        self._queue: list[Batch] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.groups = 0  # transactions committed (for tests and the benchmark)

    def submit(
        self, job_id: int, authorization: str | None, events: list[ParsedEvent]
    ) -> Future[IngestResult]:
        """Queue a batch; the future resolves once it is committed (or with the IngestError refusing it)."""
        batch = Batch(job_id=job_id, authorization=authorization, events=events)
        with self._cond:
            self._queue.append(batch)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ingest-writer", daemon=True)
                self._thread.start()
            self._cond.notify()
        return batch.done

    def _take(self) -> list[Batch] | None:
        with self._cond:
            if not self._queue:
                self._cond.wait(IDLE_EXIT_S)
            if not self._queue:
                self._thread = None  # a submit after this starts a new thread
                return None
            group: list[Batch] = []
            size = 0
            while self._queue and (not group or size + len(self._queue[0].events) <= GROUP_MAX_EVENTS):
                batch = self._queue.pop(0)
                group.append(batch)
                size += len(batch.events)
            return group

    def _run(self) -> None:
        while (group := self._take()) is not None:
            try:
                self.write_group(group)
            except BaseException as exc:  # noqa: BLE001 - every waiting request must get an answer
                for batch in group:
                    if not batch.done.done():
                        batch.done.set_exception(exc)

    def write_group(self, group: list[Batch]) -> None:
        """Store every batch of `group` in one transaction (a SAVEPOINT each), commit, then answer them."""
        outcomes: list[IngestResult | BaseException] = []
        session = self.factory()
        try:
            if session.get_bind().dialect.name == "sqlite":
                session.connection(execution_options={"sqlite_begin": "BEGIN IMMEDIATE"})
            for batch in group:
                try:
                    with session.begin_nested():
                        outcomes.append(self._store(session, batch))
                except Exception as exc:  # noqa: BLE001 - rolled back to its savepoint; answered alone
                    outcomes.append(exc)
            session.commit()
        except BaseException as exc:
            session.rollback()
            for batch in group:
                batch.done.set_exception(exc)
            return
        finally:
            session.close()
        self.groups += 1
        for batch, outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                batch.done.set_exception(outcome)
            else:
                batch.done.set_result(outcome)

    @staticmethod
    def _store(session: Session, batch: Batch) -> IngestResult:
        # checked again inside the write transaction: the job may have finished since the request's check
        job = session.get(Job, batch.job_id, with_for_update=True, populate_existing=True)
        if job is None:
            raise IngestError(404, f"job {batch.job_id} does not exist")
        authorize(session, job=job, authorization=batch.authorization)
        check_accepting(job)
        return ingest_events(session, job=job, events=batch.events)


_WRITERS: weakref.WeakKeyDictionary[sessionmaker[Session], IngestWriter] = weakref.WeakKeyDictionary()
_WRITERS_LOCK = threading.Lock()


def writer_for(factory: sessionmaker[Session]) -> IngestWriter:
    """The writer of this session factory's database (made on first use)."""
    with _WRITERS_LOCK:
        writer = _WRITERS.get(factory)
        if writer is None:
            writer = _WRITERS[factory] = IngestWriter(factory)
        return writer
