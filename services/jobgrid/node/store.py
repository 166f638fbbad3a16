"""The node's durable queues: one SQLite file (WAL) holding the activeQueue, the backupQueue and results.

A job row whose owner is this node belongs to the activeQueue; any other owner makes it a
replica in the backupQueue. A row's state is the job lifecycle's (`lifecycle.JobState`): waiting (on
dependencies), queued, leased. Finished jobs leave the queues and become result rows (kept on the
owner and its replicas); the owner's own result row is `copied` once every replica has it, and only
then is it handed out. This is the only module with SQL. Every method is one transaction; callers batch.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import msgspec

from ..errors import StorageError
from ..protocol import JobRecord, Result
from .lifecycle import copy_replaces
from .sqlite import Txn, chunks, open_db

# an adopted row's lease lasts at least the grace given (its holder renews it with the new owner)
_GRACE = "lease_until=CASE WHEN state='leased' THEN max(coalesce(lease_until, 0), ?) ELSE lease_until END"

_enc = msgspec.msgpack.Encoder()
_dec_job = msgspec.msgpack.Decoder(JobRecord)
_dec_result = msgspec.msgpack.Decoder(Result)


class Store:
    """Durable queues of one node. `synchronous=NORMAL` under WAL: a commit survives a process
    crash; a power loss may drop the last commits, which is what the R-1 replicas are for."""

    def __init__(self, path: Path, *, synchronous: str = "NORMAL") -> None:
        self.path = path
        self.db = open_db(path, synchronous)
        row = self.db.execute("SELECT max(seq) FROM jobs").fetchone()
        self._seq = (row[0] or 0) + 1

    def close(self) -> None:
        self.db.close()

    # ---- meta --------------------------------------------------------------------------------
    def get_meta(self, key: str) -> bytes | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: bytes) -> None:
        self._write("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", [(key, value)])

    # ---- writing -------------------------------------------------------------------------------
    def _write(self, sql: str, rows: Iterable[tuple]) -> None:
        try:
            self.db.executemany(sql, rows)
        except sqlite3.Error as e:
            raise StorageError(f"{self.path}: write failed: {e}") from None

    def _txn(self):
        return Txn(self.db, self.path)

    def transaction(self) -> Txn:
        """One transaction around several calls (the calls' own transactions join it)."""
        return Txn(self.db, self.path)

    def put_jobs(self, records: Sequence[JobRecord]) -> list[str]:
        """Insert jobs that are not known yet (as jobs or results); returns the ids inserted."""
        if not records:
            return []
        ids = [r.spec.id for r in records]
        with self._txn():
            known = self._known(ids)
            rows = []
            fresh = []
            for r in records:
                if r.spec.id in known:
                    continue
                known.add(r.spec.id)
                fresh.append(r.spec.id)
                rows.append(self._row(r))
            self._write("INSERT INTO jobs(id, owner, state, priority, seq, not_before, lease_holder, lease_until, "
                        "record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return fresh

    def upsert_replicas(self, records: Sequence[JobRecord]) -> None:
        """Store copies sent by an owner; a job that already has a result stays finished."""
        if not records:
            return
        with self._txn():
            done = self._with_results([r.spec.id for r in records])
            rows = [self._row(r) for r in records if r.spec.id not in done]
            self._write("INSERT INTO jobs(id, owner, state, priority, seq, not_before, lease_holder, lease_until, "
                        "record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                        "owner=excluded.owner, state=excluded.state, priority=excluded.priority, "
                        "not_before=excluded.not_before, record=excluded.record, lease_holder=excluded.lease_holder, "
                        "lease_until=excluded.lease_until", rows)

    def note_leases(self, owner: str, notes: Sequence[tuple[str, str, float]]) -> None:
        """Copies of `owner`'s jobs that its runners' thieves hold now: (id, holder, until)."""
        with self._txn():
            self._write("UPDATE jobs SET state='leased', lease_holder=?, lease_until=? WHERE id=? AND owner=? "
                        "AND state<>'waiting'", [(h, u, i, owner) for i, h, u in notes])

    def _row(self, r: JobRecord) -> tuple:
        """A row for a record: a lease survives a copy only with its holder named (a steal); otherwise a
        copy of a leased job is queued (its runner was the owner's own, which goes down with the owner)."""
        self._seq += 1
        leased = r.state == "leased" and r.holder is not None
        state = "queued" if r.state == "leased" and not leased else r.state
        return (r.spec.id, r.owner, state, r.spec.priority, self._seq, r.not_before,
                r.holder if leased else None, r.lease_until if leased else None, _enc.encode(r))

    def _known(self, ids: Sequence[str]) -> set[str]:
        out: set[str] = set()
        for chunk in chunks(ids, 500):
            marks = ",".join("?" * len(chunk))
            out.update(x for (x,) in self.db.execute(f"SELECT id FROM jobs WHERE id IN ({marks})", chunk))
            out.update(x for (x,) in self.db.execute(
                f"SELECT job_id FROM results WHERE job_id IN ({marks})", chunk))
        return out

    def _with_results(self, ids: Sequence[str]) -> set[str]:
        out: set[str] = set()
        for chunk in chunks(ids, 500):
            marks = ",".join("?" * len(chunk))
            out.update(x for (x,) in self.db.execute(
                f"SELECT job_id FROM results WHERE job_id IN ({marks})", chunk))
        return out

    # ---- leasing -------------------------------------------------------------------------------
    def lease(self, owner: str, holder: str, count: int, lease_until: float, now: float) -> list[JobRecord]:
        """Hand out up to `count` queued jobs of `owner`, highest priority first, oldest first."""
        if count <= 0:
            return []
        with self._txn():
            rows = self.db.execute(
                "SELECT id, record FROM jobs WHERE owner=? AND state='queued' AND not_before<=? "
                "ORDER BY priority DESC, seq LIMIT ?", (owner, now, count)).fetchall()
            if not rows:
                return []
            out = []
            upd = []
            for job_id, blob in rows:
                rec = _dec_job.decode(blob)
                rec.attempts += 1
                rec.state = "leased"
                out.append(rec)
                upd.append((holder, lease_until, _enc.encode(rec), job_id))
            self._write("UPDATE jobs SET state='leased', lease_holder=?, lease_until=?, record=? WHERE id=?", upd)
        return out

    def renew(self, owner: str, holder: str, ids: Sequence[str], lease_until: float) -> list[str]:
        """Extend leases still held by `holder`; returns the ids whose lease was extended."""
        ok = []
        with self._txn():
            for job_id in ids:
                cur = self.db.execute("UPDATE jobs SET lease_until=? WHERE id=? AND owner=? AND "
                                      "state='leased' AND lease_holder=?", (lease_until, job_id, owner, holder))
                if cur.rowcount:
                    ok.append(job_id)
        return ok

    def expire_leases(self, owner: str, now: float, holders: Iterable[str] | None = None) -> list[str]:
        """Put back jobs whose lease ran out (or whose holder is gone) so they run again."""
        with self._txn():
            if holders is None:
                rows = self.db.execute("SELECT id FROM jobs WHERE state='leased' AND lease_until<? AND owner=?",
                                       (now, owner)).fetchall()
            else:
                hs = list(holders)
                if not hs:
                    return []
                marks = ",".join("?" * len(hs))
                rows = self.db.execute(f"SELECT id FROM jobs WHERE state='leased' AND owner=? AND "
                                       f"lease_holder IN ({marks})", (owner, *hs)).fetchall()
            ids = [r[0] for r in rows]
            self._write("UPDATE jobs SET state='queued', lease_holder=NULL, lease_until=NULL WHERE id=?",
                        [(i,) for i in ids])
        return ids

    def requeue(self, records: Sequence[JobRecord]) -> None:
        """Put jobs back in the queue with their updated attempt counts and delays."""
        with self._txn():
            self._write("UPDATE jobs SET state='queued', lease_holder=NULL, lease_until=NULL, not_before=?, "
                        "record=? WHERE id=?", [(r.not_before, _enc.encode(r), r.spec.id) for r in records])

    def release(self, owner: str, holder: str, ids: Sequence[str]) -> list[str]:
        """Give back leased jobs that never started (a runner's prefetch): queued again, attempt undone."""
        out = []
        with self._txn():
            for chunk in chunks(list(ids), 500):
                marks = ",".join("?" * len(chunk))
                rows = self.db.execute(f"SELECT id, record FROM jobs WHERE owner=? AND state='leased' AND "
                                       f"lease_holder=? AND id IN ({marks})", (owner, holder, *chunk)).fetchall()
                upd = []
                for job_id, blob in rows:
                    rec = _dec_job.decode(blob)
                    rec.attempts = max(0, rec.attempts - 1)
                    rec.state = "queued"
                    upd.append((_enc.encode(rec), job_id))
                    out.append(job_id)
                self._write("UPDATE jobs SET state='queued', lease_holder=NULL, lease_until=NULL, record=? "
                            "WHERE id=?", upd)
        return out

    def requeue_all_leased(self, owner: str) -> int:
        with self._txn():
            cur = self.db.execute("UPDATE jobs SET state='queued', lease_holder=NULL, lease_until=NULL "
                                  "WHERE owner=? AND state='leased'", (owner,))
            return cur.rowcount

    # ---- results -------------------------------------------------------------------------------
    def record_results(self, owner: str, results: Sequence[Result], ttl: dict[str, float | None] | None = None
                       ) -> tuple[list[Result], list[str], list[str]]:
        """First result wins. Returns (recorded, duplicates, unknown ids)."""
        recorded: list[Result] = []
        dups: list[str] = []
        unknown: list[str] = []
        now = time.time()
        with self._txn():
            for res in results:
                if self.db.execute("SELECT 1 FROM results WHERE job_id=?", (res.job_id,)).fetchone():
                    dups.append(res.job_id)
                    continue
                row = self.db.execute("SELECT owner FROM jobs WHERE id=?", (res.job_id,)).fetchone()
                if row is None or row[0] != owner:
                    unknown.append(res.job_id)
                    continue
                t = (ttl or {}).get(res.job_id)
                res.expires_at = now + t if t else None  # travels with the result: replicas expire it too
                self.db.execute("INSERT INTO results(job_id, owner, state, recorded_at, expires_at, result, copied) "
                                "VALUES (?, ?, ?, ?, ?, ?, 0)", (res.job_id, owner, res.state, now,
                                                                res.expires_at, _enc.encode(res)))
                self.db.execute("DELETE FROM jobs WHERE id=?", (res.job_id,))
                recorded.append(res)
        return recorded, dups, unknown

    def put_result_replicas(self, owner: str, results: Sequence[Result], drop: Sequence[str], me: str = "",
                            members: frozenset[str] = frozenset()) -> None:
        """Copies of `owner`'s results. A copy replaces a record held here only as `lifecycle.copy_replaces`
        says: never one this node (`me`) owns, never a member's (of `members`) for a non-member's copy."""
        now = time.time()
        with self._txn():
            held = {i: o for chunk in chunks([r.job_id for r in results], 500) for i, o in self.db.execute(
                f"SELECT job_id, owner FROM results WHERE job_id IN ({','.join('?' * len(chunk))})", chunk)}
            take = [r for r in results if r.job_id not in held or copy_replaces(
                held_owner=held[r.job_id], incoming_owner=owner, me=me, members=members | {me})]
            self._write("INSERT INTO results(job_id, owner, state, recorded_at, expires_at, result) "
                        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(job_id) DO UPDATE SET owner=excluded.owner, "
                        "state=excluded.state, expires_at=excluded.expires_at, result=excluded.result, copied=1",
                        [(r.job_id, owner, r.state, now, r.expires_at, _enc.encode(r)) for r in take])
            ids = list(drop) + [r.job_id for r in take]
            # a copy ends the queued copy of its job, never a job this node owns (e.g. promoted here: an
            # orphan's run reaches it through the owner, Reported, as any run does)
            self._write("DELETE FROM jobs WHERE id=? AND owner!=?", [(i, me) for i in ids])
            self._write("DELETE FROM results WHERE job_id=? AND owner=?", [(i, owner) for i in drop])  # expired

    def get_results(self, ids: Sequence[str]) -> dict[str, Result]:
        """Results of `ids` held here, whoever owns them and whether or not their copies are written."""
        out: dict[str, Result] = {}
        for chunk in chunks(list(ids), 500):
            marks = ",".join("?" * len(chunk))
            for job_id, blob in self.db.execute(
                    f"SELECT job_id, result FROM results WHERE job_id IN ({marks})", chunk):
                out[job_id] = _dec_result.decode(blob)
        return out

    def held_results(self, ids: Sequence[str]) -> dict[str, tuple[Result, str, bool]]:
        """Results of `ids` held here: (result, owner, copied)."""
        out: dict[str, tuple[Result, str, bool]] = {}
        for chunk in chunks(list(ids), 500):
            marks = ",".join("?" * len(chunk))
            for job_id, blob, owner, copied in self.db.execute(
                    f"SELECT job_id, result, owner, copied FROM results WHERE job_id IN ({marks})", chunk):
                out[job_id] = (_dec_result.decode(blob), owner, bool(copied))
        return out

    def servable_results(self, ids: Sequence[str], members: frozenset[str]) -> dict[str, Result]:
        """The results of `ids` that may be handed out: every copy written, owned by a member of the ring."""
        out: dict[str, Result] = {}
        for chunk in chunks(list(ids), 500):
            marks = ",".join("?" * len(chunk))
            for job_id, blob, owner in self.db.execute(
                    f"SELECT job_id, result, owner FROM results WHERE job_id IN ({marks}) AND copied=1", chunk):
                if owner in members:
                    out[job_id] = _dec_result.decode(blob)
        return out

    def uncopied_of(self, owner: str) -> dict[str, Result]:
        """`owner`'s results whose copies were not all written (their replication failed)."""
        return {i: _dec_result.decode(b) for i, b in self.db.execute(
            "SELECT job_id, result FROM results WHERE owner=? AND copied=0", (owner,))}

    def mark_copied(self, ids: Sequence[str]) -> None:
        """Every replica has these results now: they may be handed out."""
        with self._txn():
            for chunk in chunks(list(ids), 500):
                marks = ",".join("?" * len(chunk))
                self.db.execute(f"UPDATE results SET copied=1 WHERE copied=0 AND job_id IN ({marks})", chunk)

    def expired_results(self, owner: str, now: float) -> list[str]:
        return [i for (i,) in self.db.execute(
            "SELECT job_id FROM results WHERE owner=? AND expires_at IS NOT NULL AND expires_at<?", (owner, now))]

    def waiting_jobs(self, owner: str, limit: int = 500) -> list[JobRecord]:
        """Jobs of `owner` waiting on dependencies."""
        return [self._decode_job(b, "waiting", owner) for (b,) in self.db.execute(
            "SELECT record FROM jobs WHERE owner=? AND state='waiting' LIMIT ?", (owner, limit))]

    @staticmethod
    def _decode_job(blob: bytes, state: str, owner: str) -> JobRecord:
        rec = _dec_job.decode(blob)
        rec.state = state
        rec.owner = owner
        return rec

    def held_ids(self, ids: Sequence[str], members: frozenset[str]) -> set[str]:
        """Which of `ids` are held here (as jobs or results) under an owner in `members` (no decoding)."""
        out: set[str] = set()
        for chunk in chunks(list(ids), 500):
            marks = ",".join("?" * len(chunk))
            for table, col in (("jobs", "id"), ("results", "job_id")):
                out.update(i for i, o in self.db.execute(
                    f"SELECT {col}, owner FROM {table} WHERE {col} IN ({marks})", chunk) if o in members)
        return out

    def known_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of these ids are in the jobs table (no record decoding: the result-wait hot path)."""
        out: set[str] = set()
        for chunk in chunks(list(ids), 500):
            marks = ",".join("?" * len(chunk))
            out.update(i for (i,) in self.db.execute(f"SELECT id FROM jobs WHERE id IN ({marks})", chunk))
        return out

    def get_jobs(self, ids: Sequence[str]) -> dict[str, tuple[JobRecord, str]]:
        """id -> (record, stored state)."""
        out: dict[str, tuple[JobRecord, str]] = {}
        for chunk in chunks(list(ids), 500):
            marks = ",".join("?" * len(chunk))
            for job_id, blob, state, owner in self.db.execute(
                    f"SELECT id, record, state, owner FROM jobs WHERE id IN ({marks})", chunk):
                rec = _dec_job.decode(blob)
                rec.owner = owner
                rec.state = state
                out[job_id] = (rec, state)
        return out

    def expire_results(self, now: float) -> int:
        with self._txn():
            return self.db.execute("DELETE FROM results WHERE expires_at IS NOT NULL AND expires_at<?",
                                   (now,)).rowcount

    # ---- ownership -------------------------------------------------------------------------------
    def owners(self) -> set[str]:
        return {o for (o,) in self.db.execute("SELECT DISTINCT owner FROM jobs")} | {
            o for (o,) in self.db.execute("SELECT DISTINCT owner FROM results")}

    def jobs_of(self, owner: str, after: str = "", limit: int = 5000) -> list[JobRecord]:
        out = []
        for blob, state, own, holder, until in self.db.execute(
                "SELECT record, state, owner, lease_holder, lease_until FROM jobs WHERE owner=? AND id>? "
                "ORDER BY id LIMIT ?", (owner, after, limit)):
            rec = _dec_job.decode(blob)
            rec.state, rec.owner, rec.holder, rec.lease_until = state, own, holder, until
            out.append(rec)
        return out

    def results_of(self, owner: str, after: str = "", limit: int = 5000) -> list[Result]:
        return [_dec_result.decode(b) for (b,) in self.db.execute(
            "SELECT result FROM results WHERE owner=? AND job_id>? ORDER BY job_id LIMIT ?",
            (owner, after, limit))]

    def adopt(self, old_owner: str, new_owner: str, ids: Sequence[str] | None = None, *,
              lease_grace: float = 0.0) -> int:
        """Promote replicas: jobs and results of `old_owner` (all, or `ids`) become `new_owner`'s. Rows keep
        their state and lease; a lease gets at least `lease_grace` (epoch s) for its holder to renew it
        with the new owner (leases of holders no longer in the ring: `expire_leases_of_strangers`)."""
        with self._txn():
            if ids is None:
                n = self.db.execute(f"UPDATE jobs SET owner=?, {_GRACE} WHERE owner=?",
                                    (new_owner, lease_grace, old_owner)).rowcount
                self.db.execute("UPDATE results SET owner=? WHERE owner=?", (new_owner, old_owner))
                return n
            n = 0
            for chunk in chunks(list(ids), 500):
                marks = ",".join("?" * len(chunk))
                n += self.db.execute(f"UPDATE jobs SET owner=?, {_GRACE} WHERE owner=? AND id IN ({marks})",
                                     (new_owner, lease_grace, old_owner, *chunk)).rowcount
                self.db.execute(f"UPDATE results SET owner=? WHERE owner=? AND job_id IN ({marks})",
                                (new_owner, old_owner, *chunk))
            return n

    def expire_leases_of_strangers(self, owner: str, members: Sequence[str]) -> list[str]:
        """Put back `owner`'s jobs leased to nodes that are not in `members` (gone, or never known here)."""
        with self._txn():
            marks = ",".join("?" * len(members))
            ids = [i for (i,) in self.db.execute(
                f"SELECT id FROM jobs WHERE owner=? AND state='leased' AND (lease_holder IS NULL OR "
                f"lease_holder NOT IN ({marks}))", (owner, *members))]
            self._write("UPDATE jobs SET state='queued', lease_holder=NULL, lease_until=NULL WHERE id=?",
                        [(i,) for i in ids])
        return ids

    def drop_owner(self, owner: str, ids: Sequence[str] | None = None) -> int:
        """Forget replicas of `owner` (all, or just `ids`); only rows still owned by it."""
        with self._txn():
            if ids is None:
                n = self.db.execute("DELETE FROM jobs WHERE owner=?", (owner,)).rowcount
                self.db.execute("DELETE FROM results WHERE owner=?", (owner,))
                return n
            n = 0
            for chunk in chunks(list(ids), 500):
                marks = ",".join("?" * len(chunk))
                n += self.db.execute(f"DELETE FROM jobs WHERE owner=? AND id IN ({marks})",
                                     (owner, *chunk)).rowcount
                self.db.execute(f"DELETE FROM results WHERE owner=? AND job_id IN ({marks})", (owner, *chunk))
            return n

    # ---- counts and listings ---------------------------------------------------------------------
    def counts(self, me: str) -> dict[str, int]:
        q = self.db.execute("SELECT state, count(*) FROM jobs WHERE owner=? GROUP BY state", (me,)).fetchall()
        c = dict(q)
        backup = self.db.execute("SELECT count(*) FROM jobs WHERE owner<>?", (me,)).fetchone()[0]
        live = c.get("queued", 0) + c.get("leased", 0) + c.get("waiting", 0)  # active: every live row
        return {"queued": c.get("queued", 0), "leased": c.get("leased", 0), "active": live, "backup": backup}

    def recent_results(self, limit: int = 50) -> list[Result]:
        return [_dec_result.decode(b) for (b,) in self.db.execute(
            "SELECT result FROM results ORDER BY recorded_at DESC LIMIT ?", (limit,))]

    def list_jobs(self, owner: str | None, state: str | None, limit: int = 100) -> list[tuple[JobRecord, str]]:
        sql = "SELECT record, state, owner FROM jobs WHERE 1=1"
        args: list = []
        if owner:
            sql += " AND owner=?"
            args.append(owner)
        if state:
            sql += " AND state=?"
            args.append(state)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        out = []
        for blob, st, own in self.db.execute(sql, args):
            rec = _dec_job.decode(blob)
            rec.state = st
            rec.owner = own
            out.append((rec, st))
        return out
