"""The job execution layer: real worker processes, no mocks."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import cloudpickle
import msgspec
import pytest

from jobgrid import examples
from jobgrid.node.pool import WorkerPool
from jobgrid.protocol import JobRecord, JobSpec, Result

NODE = "node-a"


def record(job_id: str, kind: str, attempts: int = 1, **fields: Any) -> JobRecord:
    return JobRecord(spec=JobSpec(id=job_id, kind=kind, **fields), owner=NODE, attempts=attempts)


def pickled(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> JobRecord:
    return record(f"p-{fn.__name__}-{time.monotonic_ns()}", "pickle", payload=cloudpickle.dumps((fn, args, kwargs)))


def call(function: str, *args: Any, **kwargs: Any) -> JobRecord:
    return record(f"c-{function}-{time.monotonic_ns()}", "call", target=f"jobgrid.examples:{function}",
                  args=list(args), kwargs=kwargs)


def script(source: str, *argv: str, name: str = "") -> JobRecord:
    return record(f"s-{time.monotonic_ns()}", "script", source=source, argv=list(argv), name=name)


def with_pool(body: Callable[[WorkerPool], Awaitable[Any]], tmp_path: Path, size: int = 1,
              env: dict[str, str] | None = None) -> Any:
    """Start a pool, run `body`, always close the pool; returns (body's value, the pool)."""
    async def main() -> Any:
        pool = WorkerPool(size, work_root=tmp_path / "work", node_id=NODE, env=env)
        try:
            await pool.start()
            return await body(pool), pool
        finally:
            await pool.close()
    return asyncio.run(main())


def test_pickle_job_succeeds(tmp_path: Path) -> None:
    def shout(word: str, times: int = 1) -> str:
        print("printing", word)
        return word.upper() * times

    async def body(pool: WorkerPool) -> list[Result]:
        return [await pool.run(pickled(shout, "hi", times=2), timeout=30),
                await pool.run(pickled(examples.add, 2, 3), timeout=30)]

    (r, r2), _ = with_pool(body, tmp_path)
    assert r.state == "succeeded", r
    assert r.value_format == "pickle"
    assert cloudpickle.loads(r.value) == "HIHI"
    assert r.stdout == "printing hi\n"
    assert r.node == NODE and r.attempts == 1 and r.retry is False
    assert 0 < r.started_at <= r.finished_at
    assert cloudpickle.loads(r2.value) == 5


def test_call_job_succeeds_and_sees_its_job_id(tmp_path: Path) -> None:
    async def body(pool: WorkerPool) -> list[Result]:
        return [await pool.run(call("add", 40, 2), timeout=30),
                await pool.run(record("my-job.1", "call", target="jobgrid.examples:echo_env",
                                      args=["JOBGRID_JOB_ID"]), timeout=30),
                await pool.run(call("echo_env", "JOBGRID_JOB_ID"), timeout=30)]

    (r, r_id, r_after), _ = with_pool(body, tmp_path)
    assert r.state == "succeeded", r
    assert r.value_format == "json" and msgspec.json.decode(r.value) == 42
    assert msgspec.json.decode(r_id.value) == "my-job.1"
    assert msgspec.json.decode(r_after.value) == r_after.job_id  # set per job, not left over


def test_call_job_failures_are_clear(tmp_path: Path) -> None:
    async def body(pool: WorkerPool) -> list[Result]:
        return [await pool.run(record("bad-import", "call", target="no_such_module_xyz:f"), timeout=30),
                await pool.run(record("bad-attr", "call", target="jobgrid.examples:nope"), timeout=30),
                await pool.run(pickled(lambda: object()), timeout=30),
                await pool.run(call("fail", "nope"), timeout=30)]

    (imp, attr, unpicklable_ok, raised), _ = with_pool(body, tmp_path)
    assert imp.state == "failed" and "no_such_module_xyz:f" in imp.error
    assert imp.error_type == "ModuleNotFoundError"
    assert attr.state == "failed" and "jobgrid.examples:nope" in attr.error
    assert unpicklable_ok.state == "succeeded"  # cloudpickle can pickle a plain object()
    assert raised.state == "failed" and raised.error == "ValueError: nope" and "raise ValueError" in raised.traceback


def test_unserializable_results_fail(tmp_path: Path) -> None:
    import threading

    async def body(pool: WorkerPool) -> list[Result]:
        return [await pool.run(pickled(threading.Lock), timeout=30),
                await pool.run(record("json", "call", target="threading:Lock"), timeout=30)]

    (p, j), _ = with_pool(body, tmp_path)
    assert p.state == "failed" and p.error_type == "UnpicklableResult" and "cannot be pickled" in p.error
    assert p.value is None
    assert j.state == "failed" and j.error_type == "UnserializableResult" and "JSON" in j.error


def test_raising_pickle_job_ships_the_exception(tmp_path: Path) -> None:
    class Custom(Exception):
        pass

    def raise_custom() -> None:
        raise Custom("custom trouble")

    async def body(pool: WorkerPool) -> list[Result]:
        return [await pool.run(pickled(examples.fail, "kaput"), timeout=30),
                await pool.run(pickled(raise_custom), timeout=30)]

    (r, c), _ = with_pool(body, tmp_path)
    assert r.state == "failed"
    assert r.error == "ValueError: kaput"
    assert r.error_type == "ValueError"
    assert "Traceback (most recent call last)" in r.traceback
    assert "raise ValueError(message)" in r.traceback
    assert "jobgrid/worker.py" not in r.traceback
    exc = cloudpickle.loads(r.value)
    assert type(exc) is ValueError and exc.args == ("kaput",)
    assert c.error_type.endswith("Custom")
    exc2 = cloudpickle.loads(c.value)
    assert type(exc2).__name__ == "Custom" and str(exc2) == "custom trouble"


def test_script_job(tmp_path: Path) -> None:
    source = (
        "import os, sys\n"
        "print('argv', sys.argv)\n"
        "print('main', __name__ == '__main__')\n"
        "print('cwd', os.getcwd())\n"
        "print('err', file=sys.stderr)\n"
    )

    async def body(pool: WorkerPool) -> list[Result]:
        return [await pool.run(script(source, "a", "b", name="train.py"), timeout=30),
                await pool.run(script("import sys\nprint('about to exit')\nsys.exit(3)\n"), timeout=30),
                await pool.run(script("raise KeyError('k')\n"), timeout=30),
                await pool.run(script("import sys\nsys.exit()\n"), timeout=30),
                await pool.run(script("import sys\nprint(sys.argv)\n"), timeout=30)]

    (ok, exit3, raised, exit0, argv_again), _ = with_pool(body, tmp_path)
    assert ok.state == "succeeded" and ok.exit_code == 0, ok
    assert "argv ['train.py', 'a', 'b']" in ok.stdout
    assert "main True" in ok.stdout
    assert f"cwd {(tmp_path / 'work' / '0').resolve()}" in ok.stdout
    assert ok.stderr == "err\n"
    assert exit3.state == "failed" and exit3.exit_code == 3
    assert exit3.stdout == "about to exit\n"
    assert raised.state == "failed" and raised.exit_code == 1
    assert "KeyError: 'k'" in raised.traceback and "KeyError: 'k'" in raised.stderr
    assert "raise KeyError('k')" in raised.traceback  # the script's lines show in the traceback
    assert exit0.state == "succeeded" and exit0.exit_code == 0
    assert argv_again.stdout == "['script']\n"  # argv restored between jobs


def test_script_output_of_subprocesses_is_captured(tmp_path: Path) -> None:
    source = "import os\nos.system('echo hi')\nos.system('echo oops 1>&2')\nprint('done')\n"

    async def body(pool: WorkerPool) -> Result:
        return await pool.run(script(source), timeout=30)

    r, _ = with_pool(body, tmp_path)
    assert r.state == "succeeded", r
    assert r.stdout == "hi\ndone\n"
    assert r.stderr == "oops\n"


def test_output_is_capped_to_the_last_mebibyte(tmp_path: Path) -> None:
    source = "import sys\nsys.stdout.write('x' * (3 << 20))\nsys.stdout.write('END')\n"

    async def body(pool: WorkerPool) -> Result:
        return await pool.run(script(source), timeout=30)

    r, _ = with_pool(body, tmp_path)
    assert r.state == "succeeded"
    assert len(r.stdout) == 1 << 20 and r.stdout.endswith("xEND")


def test_environment_cwd_and_path_are_restored(tmp_path: Path) -> None:
    mess = ("import os, sys\nos.environ['LEAK'] = '1'\nsys.path.append('/nowhere')\n"
            "os.makedirs('sub', exist_ok=True)\nos.chdir('sub')\n")
    check = ("import os, sys\nprint(os.environ.get('LEAK'), '/nowhere' in sys.path, os.getcwd())\n")

    async def body(pool: WorkerPool) -> list[Result]:
        return [await pool.run(script(mess), timeout=30), await pool.run(script(check), timeout=30)]

    (_, r), _ = with_pool(body, tmp_path)
    assert r.stdout == f"None False {(tmp_path / 'work' / '0').resolve()}\n"


def test_crash_is_reported_and_the_pool_recovers(tmp_path: Path) -> None:
    async def body(pool: WorkerPool) -> list[Result]:
        crashed = await pool.run(call("crash"), timeout=30)
        killed = await pool.run(script("import os, signal\nprint('bye', flush=True)\n"
                                       "os.kill(os.getpid(), signal.SIGKILL)\n"), timeout=30)
        after = await pool.run(call("add", 1, 1), timeout=30)
        return [crashed, killed, after]

    (crashed, killed, after), pool = with_pool(body, tmp_path)
    assert crashed.state == "failed" and crashed.error_type == "WorkerCrashed"
    assert crashed.retry is True
    assert crashed.error == "worker process died (exit code 13) while running the job"
    assert killed.error_type == "WorkerCrashed" and "exit code -9" in killed.error
    assert killed.stdout == "bye\n"  # the output written before death is kept
    assert after.state == "succeeded" and msgspec.json.decode(after.value) == 2


def test_timeout_kills_the_job_and_the_pool_still_works(tmp_path: Path) -> None:
    async def body(pool: WorkerPool) -> tuple[Result, float, Result, list[dict[str, Any]]]:
        before = {s["pid"] for s in pool.snapshot()}
        t0 = time.monotonic()
        hung = await pool.run(call("hang"), timeout=0.5)
        elapsed = time.monotonic() - t0
        after = await pool.run(call("square", 7), timeout=30)
        snap = pool.snapshot()
        assert not before & {s["pid"] for s in snap}  # the hung worker was replaced
        return hung, elapsed, after, snap

    (hung, elapsed, after, snap), _ = with_pool(body, tmp_path)
    assert hung.state == "failed" and hung.error_type == "JobTimeout"
    assert hung.error == "job exceeded its timeout of 0.5 s and was killed"
    assert 0.45 <= elapsed < 10
    assert after.state == "succeeded" and msgspec.json.decode(after.value) == 49
    assert snap[0]["job_id"] is None and snap[0]["pid"]


def test_cancelling_run_kills_the_job(tmp_path: Path) -> None:
    async def body(pool: WorkerPool) -> tuple[int | None, list[dict[str, Any]], Result]:
        task = asyncio.ensure_future(pool.run(call("hang"), timeout=60))
        await asyncio.sleep(0.3)
        pid = pool.snapshot()[0]["pid"]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        after = await pool.run(call("noop", 5), timeout=30)
        return pid, pool.snapshot(), after

    (pid, snap, after), _ = with_pool(body, tmp_path)
    assert pid is not None and not _gone([pid])
    assert snap[0]["pid"] != pid
    assert msgspec.json.decode(after.value) == 5


def test_two_workers_run_in_parallel(tmp_path: Path) -> None:
    async def body(pool: WorkerPool) -> tuple[list[Result], float]:
        await pool.run(call("noop"), timeout=30)  # warm both imports of the examples module
        await asyncio.gather(pool.run(call("noop"), timeout=30), pool.run(call("noop"), timeout=30))
        t0 = time.monotonic()
        results = await asyncio.gather(pool.run(call("sleep", 0.5, "a"), timeout=30),
                                       pool.run(call("sleep", 0.5, "b"), timeout=30))
        return results, time.monotonic() - t0

    (results, elapsed), _ = with_pool(body, tmp_path, size=2)
    assert [msgspec.json.decode(r.value) for r in results] == ["a", "b"]
    assert elapsed < 0.9, elapsed


def test_concurrency_is_bounded_by_size(tmp_path: Path) -> None:
    async def body(pool: WorkerPool) -> tuple[int, float]:
        t0 = time.monotonic()
        jobs = [asyncio.ensure_future(pool.run(call("sleep", 0.2), timeout=30)) for _ in range(4)]
        await asyncio.sleep(0.1)
        busy = sum(1 for s in pool.snapshot() if s["job_id"] is not None)
        assert pool.idle == 0
        results = await asyncio.gather(*jobs)
        assert all(r.state == "succeeded" for r in results)
        return busy, time.monotonic() - t0

    (busy, elapsed), _ = with_pool(body, tmp_path, size=2)
    assert busy == 2
    assert elapsed >= 0.4  # 4 jobs of 0.2 s on 2 workers: two rounds


def test_child_environment_is_scrubbed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBGRID_TOKEN", "s3cret")

    async def body(pool: WorkerPool) -> list[Result]:
        return [await pool.run(call("echo_env", "JOBGRID_TOKEN"), timeout=30),
                await pool.run(call("echo_env", "GIVEN"), timeout=30),
                await pool.run(call("echo_env", "HOME"), timeout=30),
                await pool.run(pickled(lambda: sorted(os.environ)), timeout=30)]

    (token, given, home, names), _ = with_pool(body, tmp_path, env={"GIVEN": "yes"})
    assert msgspec.json.decode(token.value) is None
    assert msgspec.json.decode(given.value) == "yes"
    assert msgspec.json.decode(home.value) == str((tmp_path / "work" / "0").resolve())
    allowed = {"PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "HOME", "GIVEN", "JOBGRID_JOB_ID",
               "JOBGRID_ATTEMPT", "LC_CTYPE"}  # LC_CTYPE: Python's C-locale coercion may add it
    assert set(cloudpickle.loads(names.value)) <= allowed


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a killed orphan awaits init's reaping)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no procfs: fall back to signal 0
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _gone(pids: list[int], within: float = 5.0) -> list[int]:
    """The pids still alive after waiting up to `within` seconds."""
    deadline = time.monotonic() + within
    while (alive := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def test_close_leaves_no_child_process(tmp_path: Path) -> None:
    async def main() -> list[int]:
        pool = WorkerPool(3, work_root=tmp_path / "work", node_id=NODE)
        try:
            await pool.start()
            pids = [s["pid"] for s in pool.snapshot()]
            assert all(_alive(p) for p in pids)
            # one worker is busy (with a grandchild) when the pool closes
            busy = asyncio.ensure_future(pool.run(script(
                "import subprocess, time\n"
                "p = subprocess.Popen(['sleep', '60'])\n"
                "open('grandchild.pid.tmp', 'w').write(str(p.pid))\n"
                "import os; os.rename('grandchild.pid.tmp', 'grandchild.pid')\n"
                "time.sleep(60)\n"), timeout=60))
            pid_file = tmp_path / "work" / "0" / "grandchild.pid"
            for _ in range(100):
                if pid_file.exists():
                    break
                await asyncio.sleep(0.05)
            pids.append(int(pid_file.read_text()))
        finally:
            await pool.close()
        await pool.close()  # idempotent
        result = await busy
        assert result.state == "failed"
        return pids

    pids = asyncio.run(main())
    assert not [p for p in pids[:3] if _alive(p)]  # our own children are reaped by close()
    assert not _gone(pids)  # the job's subprocess was killed with its process group


def test_run_after_close_raises(tmp_path: Path) -> None:
    from jobgrid.node.pool import PoolClosed

    async def main() -> None:
        pool = WorkerPool(1, work_root=tmp_path / "work", node_id=NODE)
        await pool.start()
        await pool.close()
        with pytest.raises(PoolClosed):
            await pool.run(call("noop"), timeout=5)

    asyncio.run(main())
