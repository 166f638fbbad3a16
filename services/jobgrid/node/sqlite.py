"""Opening a node's SQLite file: WAL mode, the schema, integrity check, migrations of stores written by
earlier versions, and the transaction context every Store method shares. The queries are in store.py."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from ..errors import StorageError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    not_before REAL NOT NULL,
    lease_holder TEXT,
    lease_until REAL,
    record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (owner, state, priority DESC, seq);
CREATE INDEX IF NOT EXISTS jobs_leases ON jobs (lease_until) WHERE state = 'leased';
CREATE TABLE IF NOT EXISTS results (
    job_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    state TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    expires_at REAL,
    result BLOB NOT NULL,
    copied INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS results_owner ON results (owner);
CREATE INDEX IF NOT EXISTS results_expiry ON results (expires_at) WHERE expires_at IS NOT NULL;
"""



def open_db(path: Path, synchronous: str) -> sqlite3.Connection:
    """The node's database in WAL mode with the current schema, checked and migrated; StorageError says
    what to do when the file or its folder cannot be used."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StorageError(f"{path}: cannot switch the database to WAL mode (got {mode})")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise StorageError(f"{path}: the database is damaged ({check}); move it away to start empty")
        _migrate(db)
    except sqlite3.DatabaseError as e:
        raise StorageError(f"{path}: cannot open the job store: {e}. If the file is corrupt, "
                           "move it away; if the folder is read-only, fix its permissions") from None
    except OSError as e:
        raise StorageError(f"{path.parent}: cannot create the data folder: {e}") from None
    return db


def _migrate(db: sqlite3.Connection) -> None:
    """Stores written by earlier versions: results without the `copied` mark (they were handed out,
    so copied), and jobs waiting on dependencies kept as queued rows with a far not_before."""
    cols = {c[1] for c in db.execute("PRAGMA table_info(results)")}
    if "copied" not in cols:
        db.execute("ALTER TABLE results ADD COLUMN copied INTEGER NOT NULL DEFAULT 1")
    db.execute("UPDATE jobs SET state='waiting' WHERE state='queued' AND not_before>=9e15")


class Txn:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an exception); nested uses join the outer transaction."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self.db = db
        self.path = path
        self.outer = False

    def __enter__(self):
        if self.db.in_transaction:
            self.outer = True
            return self
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise StorageError(f"{self.path}: cannot start a transaction: {e}") from None
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.outer:
            return False
        try:
            if exc_type is None:
                self.db.execute("COMMIT")
            else:
                self.db.execute("ROLLBACK")
        except sqlite3.Error as e:
            if exc_type is None:
                raise StorageError(f"{self.path}: commit failed: {e}") from None
        return False


def chunks(seq: Sequence, n: int):
    for i in range(0, len(seq), n):
        yield seq[i:i + n]
