"""Timing probe for node processes (bench/probe/tail.py puts this folder on their PYTHONPATH).

Active only with JOBGRID_PROBE=<folder> in the environment (worker processes never get it: the pool
scrubs their environment). Wraps a few node methods from outside to record CLOCK_MONOTONIC timestamps
per job (time.monotonic() is one clock for every process on Linux), garbage-collector pauses
(gc.callbacks), SQLite commit times and event-loop stalls, and writes them to
<folder>/probe-<pid>.jsonl when the node exits. A measuring tool, not part of jobgrid: it changes no
behaviour, only adds a few microseconds per wrapped call (and a 2 ms loop-lag ticker).
"""
import os

if os.environ.get("JOBGRID_PROBE"):
    import atexit
    import functools
    import gc
    import json
    import time

    _OUT = os.environ["JOBGRID_PROBE"]
    _ev: list = []
    _now = time.monotonic
    _gc_start = [0.0]

    def _gc(phase, info):
        if phase == "start":
            _gc_start[0] = _now()
        else:
            _ev.append(("gc", None, _gc_start[0], _now(), info.get("generation"), info.get("collected")))
    gc.callbacks.append(_gc)

    def _ids(x):
        """Job ids in an argument: specs, records, results, leases or a ReplicateRequest."""
        if x is None:
            return []
        if hasattr(x, "jobs") and hasattr(x, "results"):
            return [j.spec.id for j in x.jobs] + [r.job_id for r in x.results]
        out = []
        for y in x if isinstance(x, list) else [x]:
            if isinstance(y, list):
                out += _ids(y)
            elif hasattr(y, "spec"):
                out.append(y.spec.id)
            elif hasattr(y, "job_id"):
                out.append(y.job_id)
            elif hasattr(y, "id"):
                out.append(y.id)
            elif isinstance(y, str):
                out.append(y)
        return out

    def _wrap_async(cls, name, arg=0):
        orig = getattr(cls, name)

        @functools.wraps(orig)
        async def w(self, *a, **k):
            t0 = _now()
            out = None
            try:
                out = await orig(self, *a, **k)
                return out
            finally:
                what = name
                if name == "replicate" and a:  # which half of a job's life it copies
                    what = "replicate:jobs" if a[0].jobs else "replicate:results"
                extra = (len(out),) if name == "results_within" and isinstance(out, list) else ()
                _ev.append((what, _ids(a[arg]) if len(a) > arg else [], t0, _now(), *extra))
        setattr(cls, name, w)

    def _wrap_sync(cls, name, arg=0):
        orig = getattr(cls, name)

        @functools.wraps(orig)
        def w(self, *a, **k):
            t0 = _now()
            try:
                return orig(self, *a, **k)
            finally:
                _ev.append((name, _ids(a[arg]) if len(a) > arg else [], t0, _now()))
        setattr(cls, name, w)

    def _install():
        import asyncio

        from jobgrid.node import app, grid, jobs, pool, store

        _wrap_async(jobs.JobFlow, "_flush_submits")
        _wrap_async(jobs.JobFlow, "_flush_reports")
        _wrap_async(jobs.JobFlow, "results_within")
        _wrap_async(jobs.JobFlow, "wait_results")
        _wrap_async(grid.Grid, "replicate")
        _wrap_sync(grid.Grid, "on_replicate")
        _wrap_sync(grid.Grid, "on_heartbeat")
        _wrap_async(pool.WorkerPool, "run")
        orig_exit = store._Txn.__exit__

        def txn_exit(self, *a):
            t0 = _now()
            try:
                return orig_exit(self, *a)
            finally:
                if not self.outer:
                    _ev.append(("commit", None, t0, _now()))
        store._Txn.__exit__ = txn_exit
        orig_start = app.Node.start

        async def start(self):
            await orig_start(self)

            async def lag():  # loop stalls: how late a 2 ms sleep wakes up
                while True:
                    t = _now()
                    await asyncio.sleep(0.002)
                    late = _now() - t - 0.002
                    if late > 0.002:
                        _ev.append(("stall", None, t + 0.002, t + 0.002 + late))
            self._probe_lag = asyncio.ensure_future(lag())
            _ev.append(("node", [self.grid.id], _now(), _now()))
            trying = os.environ.get("JOBGRID_PROBE_TRY", "").split(",")
            if "freeze" in trying:  # what ranked change 3 proposes: start-up objects out of every collection
                gc.freeze()
                gc.set_threshold(10_000, 20, 20)
            if "checkpoint" in trying:  # ranked change 2: checkpoints on a thread, not inside COMMIT
                import sqlite3
                import threading

                self.grid.store.db.execute("PRAGMA wal_autocheckpoint=0")
                path = str(self.grid.store.path)

                def checkpoints():
                    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
                    while True:
                        time.sleep(0.2)
                        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                threading.Thread(target=checkpoints, daemon=True, name="probe-checkpoints").start()
        app.Node.start = start

    def _dump():
        with open(os.path.join(_OUT, f"probe-{os.getpid()}.jsonl"), "w") as f:
            for e in _ev:
                f.write(json.dumps(e) + "\n")

    _install()
    atexit.register(_dump)
