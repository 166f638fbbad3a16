"""A job with a side effect outside the grid, so a soak can count how often each job really ran.

`record(db, job_id, seconds)` appends a row (job id, host, pid, time) to a SQLite file before it sleeps:
a job that starts twice (its runner died or was cut off before the result was recorded) leaves two
rows, whatever the grid's own records say. Job processes import it as ``harness.sidefx:record``.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from collections.abc import Iterable

SCHEMA = "CREATE TABLE IF NOT EXISTS runs (job_id TEXT NOT NULL, host TEXT, pid INTEGER, at REAL)"


def record(db: str, job_id: str, seconds: float = 0.0) -> str:
    """Count one run of `job_id` in `db`, then sleep `seconds` (the job's work); returns the id."""
    with sqlite3.connect(db, timeout=60) as con:
        con.execute(SCHEMA)
        con.execute("INSERT INTO runs VALUES (?, ?, ?, ?)", (job_id, socket.gethostname(), os.getpid(), time.time()))
    con.close()
    if seconds:
        time.sleep(seconds)
    return job_id


def create(db: str) -> None:
    with sqlite3.connect(db) as con:
        con.execute(SCHEMA)
        con.execute("PRAGMA journal_mode=WAL")
    con.close()


def runs(db: str, ids: Iterable[str] | None = None) -> dict[str, list[float]]:
    """job id -> the wall-clock start time of each run."""
    con = sqlite3.connect(db, timeout=60)
    try:
        rows = con.execute("SELECT job_id, at FROM runs ORDER BY at").fetchall()
    finally:
        con.close()
    want = set(ids) if ids is not None else None
    out: dict[str, list[float]] = {}
    for jid, at in rows:
        if want is None or jid in want:
            out.setdefault(jid, []).append(at)
    return out
