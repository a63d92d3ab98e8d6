"""The durable job store: received instances, the jobs made of them and the SEGs they produced,
in one SQLite database (stdlib ``sqlite3``, WAL, ``synchronous=FULL``).

A STOW answer lists an instance only after its row (and its spool file) is committed, so nothing
acknowledged is lost by a crash. Job states::

    waiting ─(quiet period)→ queued → running → done → delivered
                    │                    │        └──→ delivery_failed (retry → done)
                    └──────→ failed ←────┘   (a restart puts running jobs back in queued)

Times are Unix seconds (``time.time()``). Methods are synchronous and thread-safe; async callers
run them in a worker thread. Rows carry UIDs and counts only, never patient identifiers.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATES = ("waiting", "queued", "running", "done", "failed", "delivered", "delivery_failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY, sop_class TEXT NOT NULL, study_uid TEXT NOT NULL, series_uid TEXT NOT NULL,
    path TEXT NOT NULL, bytes INTEGER NOT NULL, excluded TEXT, received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_by_series ON instances (series_uid);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, study_uid TEXT NOT NULL, route TEXT NOT NULL, model TEXT NOT NULL,
    state TEXT NOT NULL, reason TEXT, created_at REAL NOT NULL, last_instance_at REAL NOT NULL,
    queued_at REAL, started_at REAL, finished_at REAL, delivered_at REAL,
    timings TEXT NOT NULL DEFAULT '{}', run_attempts INTEGER NOT NULL DEFAULT 0,
    delivery_attempts INTEGER NOT NULL DEFAULT 0, next_delivery_at REAL, run_after REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state);
CREATE INDEX IF NOT EXISTS jobs_by_study ON jobs (study_uid);
CREATE TABLE IF NOT EXISTS job_series (
    job_id TEXT NOT NULL, series_uid TEXT NOT NULL, channel TEXT, PRIMARY KEY (job_id, series_uid)
);
CREATE TABLE IF NOT EXISTS job_instances (
    job_id TEXT NOT NULL, sop_uid TEXT NOT NULL, PRIMARY KEY (job_id, sop_uid)
);
CREATE TABLE IF NOT EXISTS results (
    sop_uid TEXT PRIMARY KEY, job_id TEXT NOT NULL, sop_class TEXT NOT NULL, study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL, modality TEXT NOT NULL, path TEXT NOT NULL, bytes INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS results_by_study ON results (study_uid);
"""


class InstanceConflict(Exception):
    """A SOP instance UID already stored in another study or series (UIDs are unique: refused)."""


@dataclass(frozen=True)
class StoredInstance:
    """One received instance, already fsynced at ``path``."""

    sop_uid: str
    sop_class: str
    study_uid: str
    series_uid: str
    path: Path
    bytes: int
    excluded: str | None  # why it is never processed (services.jobs.series_assembly), None: an image to segment


@dataclass(frozen=True)
class Placement:
    """Where a routed instance goes: the route (and its model) and, for multi-series models, the
    channel its series fills."""

    route: str
    model: str
    channel: str | None = None


@dataclass(frozen=True)
class Result:
    """One SEG (or other derived object) written by a job."""

    sop_uid: str
    sop_class: str
    study_uid: str
    series_uid: str
    modality: str
    path: Path
    bytes: int


@dataclass(frozen=True)
class Job:
    id: str
    study_uid: str
    route: str
    model: str
    state: str
    reason: str | None
    created_at: float
    last_instance_at: float
    queued_at: float | None
    started_at: float | None
    finished_at: float | None
    delivered_at: float | None
    timings: dict[str, float]
    run_attempts: int
    delivery_attempts: int
    next_delivery_at: float | None
    run_after: float | None  # a requeued job is not run before this time (back-off)
    series: dict[str, str | None] = field(default_factory=dict)  # series UID → channel
    instance_count: int = 0
    results: tuple[Result, ...] = ()


class JobStore:
    """One SQLite database file; one connection shared by threads behind a lock."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a commit survives power loss, not only a crash
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # --- ingest -------------------------------------------------------------------------------

    def location(self, sop_uid: str) -> tuple[str, str] | None:
        """(study UID, series UID) of a stored instance; None when it was never received."""
        with self._lock:
            row = self._db.execute("SELECT study_uid, series_uid FROM instances WHERE sop_uid = ?", (sop_uid,)).fetchone()
        return None if row is None else (row["study_uid"], row["series_uid"])

    def record_instance(self, instance: StoredInstance, placement: Placement | None, now: float | None = None) -> bool:
        """Record a received instance; a new routed image joins its series' waiting job (created
        with every stored instance of the series when there is none). Returns False when the
        instance was already stored (a re-sent instance changes no job). InstanceConflict when
        its SOP instance UID is stored in another study or series."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            known = db.execute("SELECT study_uid, series_uid FROM instances WHERE sop_uid = ?", (instance.sop_uid,)).fetchone()
            if known and (known["study_uid"], known["series_uid"]) != (instance.study_uid, instance.series_uid):
                raise InstanceConflict(instance.sop_uid)
            db.execute(
                "INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (instance.sop_uid, instance.sop_class, instance.study_uid, instance.series_uid, str(instance.path),
                 instance.bytes, instance.excluded, now),
            )
            if known or placement is None or instance.excluded is not None:
                return not known
            job_id = self._waiting_job(db, instance, placement, now)
            db.execute("UPDATE jobs SET last_instance_at = ? WHERE id = ?", (now, job_id))
            db.execute("INSERT OR IGNORE INTO job_instances VALUES (?, ?)", (job_id, instance.sop_uid))
            return True

    def _waiting_job(self, db: sqlite3.Connection, instance: StoredInstance, placement: Placement, now: float) -> str:
        """The waiting job this instance's series joins: the series' own, or (multi-series routes)
        the study's waiting job of that route."""
        if placement.channel is None:
            row = db.execute(
                "SELECT j.id FROM jobs j JOIN job_series s ON s.job_id = j.id "
                "WHERE j.state = 'waiting' AND s.series_uid = ? AND j.route = ?",
                (instance.series_uid, placement.route),
            ).fetchone()
        else:
            row = db.execute(
                "SELECT id FROM jobs WHERE state = 'waiting' AND study_uid = ? AND route = ?",
                (instance.study_uid, placement.route),
            ).fetchone()
        if row is None:
            job_id = uuid.uuid4().hex
            db.execute(
                "INSERT INTO jobs (id, study_uid, route, model, state, created_at, last_instance_at) "
                "VALUES (?, ?, ?, ?, 'waiting', ?, ?)",
                (job_id, instance.study_uid, placement.route, placement.model, now, now),
            )
        else:
            job_id = row["id"]
        if row is None and placement.channel is not None:
            # A channel series arriving (or growing) after the study's job of this route was queued:
            # the new job takes the latest series of every other channel, so that it is complete.
            for series_uid, channel in db.execute(
                "SELECT s.series_uid, s.channel FROM job_series s JOIN jobs j ON j.id = s.job_id "
                "WHERE j.study_uid = ? AND j.route = ? AND s.channel IS NOT NULL AND s.channel != ? "
                "ORDER BY j.created_at",
                (instance.study_uid, placement.route, placement.channel),
            ).fetchall():
                db.execute("DELETE FROM job_series WHERE job_id = ? AND channel = ?", (job_id, channel))
                self._join_series(db, job_id, series_uid, channel)
        self._join_series(db, job_id, instance.series_uid, placement.channel)
        return job_id

    @staticmethod
    def _join_series(db: sqlite3.Connection, job_id: str, series_uid: str, channel: str | None) -> None:
        """Add a series to a job with every stored image of it (a re-sent or grown series)."""
        if db.execute("INSERT OR IGNORE INTO job_series VALUES (?, ?, ?)", (job_id, series_uid, channel)).rowcount:
            db.execute(
                "INSERT OR IGNORE INTO job_instances SELECT ?, sop_uid FROM instances "
                "WHERE series_uid = ? AND excluded IS NULL",
                (job_id, series_uid),
            )

    # --- scheduling ---------------------------------------------------------------------------

    def promote_quiet(self, quiet_s: float, now: float | None = None) -> list[str]:
        """Waiting jobs without a new instance for ``quiet_s`` become queued; returns their ids."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            ids = [r["id"] for r in db.execute(
                "SELECT id FROM jobs WHERE state = 'waiting' AND last_instance_at <= ? ORDER BY created_at",
                (now - quiet_s,),
            )]
            for job_id in ids:
                db.execute("UPDATE jobs SET state = 'queued', queued_at = ? WHERE id = ?", (now, job_id))
        return ids

    def claim_next(self, now: float | None = None) -> Job | None:
        """The oldest queued job, now running (its run attempts counted)."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE state = 'queued' AND (run_after IS NULL OR run_after <= ?) "
                "ORDER BY queued_at, created_at LIMIT 1", (now,),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = 'running', started_at = ?, run_attempts = run_attempts + 1 WHERE id = ?",
                (now, row["id"]),
            )
        return self.job(row["id"])

    def requeue_interrupted(self, max_runs: int, now: float | None = None) -> int:
        """After a restart: jobs left running were interrupted; they run again, unless they
        already started ``max_runs`` times (a job that takes the process down with it would
        otherwise do so at every start): those fail. Returns how many run again."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'failed', finished_at = ?, reason = ? WHERE state = 'running' AND run_attempts >= ?",
                (now, f"interrupted: the service stopped during each of its {max_runs} runs", max_runs),
            )
            return db.execute("UPDATE jobs SET state = 'queued' WHERE state = 'running'").rowcount

    def requeue(self, job_id: str, reason: str, run_after: float) -> None:
        """A run stopped by a passing condition (back end unavailable, overload): queued again,
        not run before ``run_after``."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'queued', reason = ?, run_after = ? WHERE id = ? AND state = 'running'",
                (reason, run_after, job_id),
            )

    def fail(self, job_id: str, reason: str, timings: dict[str, float], now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'failed', reason = ?, finished_at = ?, timings = ? WHERE id = ?",
                (reason, now, json.dumps(timings), job_id),
            )

    def complete(self, job_id: str, results: Sequence[Result], timings: dict[str, float], deliver: bool,
                 now: float | None = None) -> None:
        """The job's outputs are written (and fsynced): record them; ``deliver`` puts it in the outbox."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            for r in results:
                db.execute(
                    "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (r.sop_uid, job_id, r.sop_class, r.study_uid, r.series_uid, r.modality, str(r.path), r.bytes, now),
                )
            db.execute(
                "UPDATE jobs SET state = 'done', reason = NULL, finished_at = ?, timings = ?, next_delivery_at = ?, "
                "delivery_attempts = 0 WHERE id = ?",
                (now, json.dumps(timings), now if deliver else None, job_id),
            )

    # --- outbox -------------------------------------------------------------------------------

    def due_deliveries(self, now: float | None = None) -> list[Job]:
        now = time.time() if now is None else now
        with self._lock:
            ids = [r["id"] for r in self._db.execute(
                "SELECT id FROM jobs WHERE state = 'done' AND next_delivery_at IS NOT NULL AND next_delivery_at <= ? "
                "ORDER BY next_delivery_at", (now,),
            )]
        return [job for job_id in ids if (job := self.job(job_id)) is not None]

    def delivered(self, job_id: str, delivery_s: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._transaction() as db:
            timings = json.loads(db.execute("SELECT timings FROM jobs WHERE id = ?", (job_id,)).fetchone()["timings"])
            timings["delivery"] = round(delivery_s, 4)
            db.execute(
                "UPDATE jobs SET state = 'delivered', delivered_at = ?, next_delivery_at = NULL, timings = ?, "
                "delivery_attempts = delivery_attempts + 1, reason = NULL WHERE id = ?",
                (now, json.dumps(timings), job_id),
            )

    def delivery_failed(self, job_id: str, reason: str, next_at: float | None) -> None:
        """One failed try: retried at ``next_at``, or (None) the job is ``delivery_failed``."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET delivery_attempts = delivery_attempts + 1, reason = ?, next_delivery_at = ?, "
                "state = CASE WHEN ? IS NULL THEN 'delivery_failed' ELSE state END WHERE id = ?",
                (reason, next_at, next_at, job_id),
            )

    def retry(self, job_id: str, deliver: bool, now: float | None = None) -> Job | None:
        """POST /v1/jobs/{id}/retry: a ``delivery_failed`` job is delivered again from its first
        try, a ``failed`` one runs again; other states are left alone. None: no such job."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'done', delivery_attempts = 0, next_delivery_at = ?, reason = NULL "
                "WHERE id = ? AND state = 'delivery_failed'", (now if deliver else None, job_id),
            )
            db.execute(
                "UPDATE jobs SET state = 'queued', queued_at = ?, reason = NULL, run_attempts = 0, run_after = NULL "
                "WHERE id = ? AND state = 'failed'",
                (now, job_id),
            )
        return self.job(job_id)

    # --- reading ------------------------------------------------------------------------------

    def job(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return None if row is None else self._job(row)

    def jobs(self, study_uid: str | None = None, limit: int = 100) -> list[Job]:
        """Newest first."""
        with self._lock:
            if study_uid is None:
                rows = self._db.execute("SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,)).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT * FROM jobs WHERE study_uid = ? ORDER BY created_at DESC LIMIT ?", (study_uid, limit)
                ).fetchall()
            return [self._job(row) for row in rows]

    def _job(self, row: sqlite3.Row) -> Job:
        series = {r["series_uid"]: r["channel"] for r in self._db.execute(
            "SELECT series_uid, channel FROM job_series WHERE job_id = ? ORDER BY series_uid", (row["id"],)
        )}
        count = self._db.execute("SELECT COUNT(*) FROM job_instances WHERE job_id = ?", (row["id"],)).fetchone()[0]
        results = tuple(self._result(r) for r in self._db.execute(
            "SELECT * FROM results WHERE job_id = ? ORDER BY sop_uid", (row["id"],)
        ))
        values: dict[str, Any] = dict(row)
        values["timings"] = json.loads(values["timings"])
        return Job(**values, series=series, instance_count=int(count), results=results)

    @staticmethod
    def _result(row: sqlite3.Row) -> Result:
        return Result(row["sop_uid"], row["sop_class"], row["study_uid"], row["series_uid"], row["modality"],
                      Path(row["path"]), row["bytes"])

    def job_instances(self, job_id: str) -> list[tuple[str, Path]]:
        """(series UID, spool path) of each instance of the job."""
        with self._lock:
            return [(r["series_uid"], Path(r["path"])) for r in self._db.execute(
                "SELECT i.series_uid, i.path FROM job_instances j JOIN instances i ON i.sop_uid = j.sop_uid "
                "WHERE j.job_id = ? ORDER BY i.series_uid, i.sop_uid", (job_id,),
            )]

    def _of_study(
        self, table: str, study_uid: str, series_uid: str | None, sop_uid: str | None
    ) -> list[sqlite3.Row]:
        """Rows of ``table`` (instances or results) of a study, optionally one series or instance."""
        query, args = f"SELECT * FROM {table} WHERE study_uid = ?", [study_uid]
        if series_uid is not None:
            query, args = query + " AND series_uid = ?", [*args, series_uid]
        if sop_uid is not None:
            query, args = query + " AND sop_uid = ?", [*args, sop_uid]
        with self._lock:
            return self._db.execute(query + " ORDER BY series_uid, sop_uid", args).fetchall()

    def results(self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None) -> list[Result]:
        """Stored results of a study (optionally one series or one instance)."""
        return [self._result(r) for r in self._of_study("results", study_uid, series_uid, sop_uid)]

    def stored_files(self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None) -> list[Path]:
        """Spool paths of what the study holds, received and produced (optionally one series or
        one instance), for WADO-RS."""
        return [
            Path(row["path"])
            for table in ("instances", "results")
            for row in self._of_study(table, study_uid, series_uid, sop_uid)
        ]

    def is_result(self, sop_uid: str) -> bool:
        """Whether this service produced the instance (the loop guard for what comes back)."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM results WHERE sop_uid = ?", (sop_uid,)).fetchone() is not None

    def counts(self) -> dict[str, int]:
        """Jobs per state (for /metrics and tests)."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetchall()
        return {state: 0 for state in STATES} | {r["state"]: int(r["n"]) for r in rows}
