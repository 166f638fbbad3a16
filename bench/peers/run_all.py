"""Vendored from shared/bench/peers (last stdout line: JSON of the medians).

Run every (system, workload) REPS times, each in a fresh process / fresh workers, and print medians.

Usage (from anywhere, with the venv's python):
  /tmp/peers/venv/bin/python ../shared/bench/peers/run_all.py [--reps 3] [--only celery,rq] [--big]
Starts redis-server on 127.0.0.1 on a free port (when Celery or RQ is selected) and stops it by pid.
Writes /tmp/peers/results/raw.jsonl (one line per run), summary.md and versions.json.
"""
import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from importlib import metadata

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.environ.get("PEERS_WORK", "/tmp/peers")
RES = os.path.join(WORK, "results")

PLAN = [  # label, script, args
    ("ppe A map(chunksize=1)", "bench_ppe.py", ["--workload", "A", "--mode", "map"]),
    ("ppe A submit", "bench_ppe.py", ["--workload", "A", "--mode", "submit"]),
    ("ppe B", "bench_ppe.py", ["--workload", "B"]),
    ("ppe C", "bench_ppe.py", ["--workload", "C"]),
    ("celery A", "bench_celery.py", ["--workload", "A"]),
    ("celery B", "bench_celery.py", ["--workload", "B"]),
    ("celery C", "bench_celery.py", ["--workload", "C"]),
    ("celery D default", "bench_celery.py", ["--workload", "D"]),
    ("celery D acks_late+reject_on_worker_lost", "bench_celery.py", ["--workload", "D", "--acks-late"]),
    ("rq A", "bench_rq.py", ["--workload", "A"]),
    ("rq B", "bench_rq.py", ["--workload", "B"]),
    ("rq C", "bench_rq.py", ["--workload", "C"]),
    ("rq D default", "bench_rq.py", ["--workload", "D"]),
    ("dask A map", "bench_dask.py", ["--workload", "A", "--mode", "map"]),
    ("dask A submit", "bench_dask.py", ["--workload", "A", "--mode", "submit"]),
    ("dask B", "bench_dask.py", ["--workload", "B"]),
    ("dask C", "bench_dask.py", ["--workload", "C"]),
    ("dask D default", "bench_dask.py", ["--workload", "D"]),
    ("dask E", "bench_dask.py", ["--workload", "E"]),
]
BIG = [
    ("ppe A20k map(chunksize=1)", "bench_ppe.py", ["--workload", "A", "--mode", "map", "--n", "20000"]),
    ("ppe A20k submit", "bench_ppe.py", ["--workload", "A", "--mode", "submit", "--n", "20000"]),
    ("dask A20k map", "bench_dask.py", ["--workload", "A", "--mode", "map", "--n", "20000"]),
    ("dask A20k submit", "bench_dask.py", ["--workload", "A", "--mode", "submit", "--n", "20000"]),
]
EXTRA = [  # workload D killing the worker main process instead of the task's process
    ("celery D kill-main default", "bench_celery.py", ["--workload", "D", "--kill", "main"]),
    ("celery D kill-main acks_late+reject_on_worker_lost", "bench_celery.py",
     ["--workload", "D", "--kill", "main", "--acks-late"]),
    ("rq D kill-main default", "bench_rq.py", ["--workload", "D", "--kill", "main"]),
    ("dask A map worker-saturation=inf", "bench_dask.py", ["--workload", "A", "--mode", "map", "--saturation", "inf"]),
]
METRICS = ["tasks_per_s", "seconds", "p50_ms", "p99_ms", "wall_s", "ok", "failed", "missing", "elapsed_s",
           "E_arg_mb_s", "E_result_mb_s", "E_many_mb_s", "E_arg_s", "E_result_s", "E_many_s", "E_gen_s"]
PKGS = ["celery", "kombu", "billiard", "redis", "rq", "dask", "distributed", "cloudpickle", "tornado", "msgpack"]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start_redis():
    port = free_port()
    pidfile = os.path.join(WORK, f"redis-{port}.pid")
    subprocess.run(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                    "--daemonize", "yes", "--pidfile", pidfile,
                    "--logfile", os.path.join(WORK, f"redis-{port}.log")], check=True)
    for _ in range(100):
        if os.path.exists(pidfile) and open(pidfile).read().strip():
            break
        time.sleep(0.05)
    return port, int(open(pidfile).read())


def run_one(script, args, redis_url, timeout=400):
    env = dict(os.environ, PYTHONPATH=HERE, PEERS_WORK=WORK)
    cmd = [sys.executable, os.path.join(HERE, script)] + args + (["--redis-url", redis_url] if redis_url else [])
    p = subprocess.Popen(cmd, cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)  # bench scripts turn SIGTERM into SystemExit -> cleanup
        out, err = p.communicate(timeout=30)
        return dict(error="timeout", stderr=err[-2000:])
    lines = [l for l in out.splitlines() if l.startswith("{")]
    if p.returncode != 0 or not lines:
        return dict(error=f"rc={p.returncode}", stderr=err[-2000:])
    return json.loads(lines[-1])


def versions():
    v = {k: metadata.version(k) for k in PKGS}
    v["python"] = platform.python_version()
    v["redis-server"] = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()
    v["cpus"] = os.cpu_count()
    return v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", default="", help="comma list of label prefixes (e.g. ppe,dask A)")
    ap.add_argument("--big", action="store_true", help="also run the 20,000-task A variants")
    ap.add_argument("--extra", action="store_true", help="also run the D kill-main variants")
    ap.add_argument("--no-main", action="store_true", help="skip the main plan (use with --big)")
    a = ap.parse_args()
    plan = ([] if a.no_main else PLAN) + (BIG if a.big else []) + (EXTRA if a.extra else [])
    if a.only:
        plan = [p for p in plan if any(p[0].startswith(o.strip()) for o in a.only.split(","))]
    os.makedirs(RES, exist_ok=True)
    vers = versions()
    json.dump(vers, open(os.path.join(RES, "versions.json"), "w"), indent=1)
    print(json.dumps(vers), flush=True)
    redis_pid = redis_url = None
    if any(s in ("bench_celery.py", "bench_rq.py") for _, s, _ in plan):
        port, redis_pid = start_redis()
        redis_url = f"redis://127.0.0.1:{port}"
        print(f"redis-server pid {redis_pid} on {redis_url}", flush=True)
    rows = []
    try:
        with open(os.path.join(RES, "raw.jsonl"), "a") as raw:
            for label, script, args in plan:
                runs = []
                for rep in range(a.reps):
                    t = time.perf_counter()
                    r = run_one(script, args, redis_url if script in ("bench_celery.py", "bench_rq.py") else None)
                    r.update(label=label, rep=rep, run_wall_s=round(time.perf_counter() - t, 1))
                    raw.write(json.dumps(r) + "\n")
                    raw.flush()
                    runs.append(r)
                    print(json.dumps(r), flush=True)
                med = {m: statistics.median([r[m] for r in runs if m in r]) for m in METRICS
                       if any(m in r for r in runs)}
                rows.append((label, med, runs))
    finally:
        if redis_pid:
            os.kill(redis_pid, signal.SIGTERM)
            print(f"stopped redis-server pid {redis_pid}", flush=True)
    lines = [f"# medians of {a.reps} runs ({time.strftime('%Y-%m-%d %H:%M')})", "",
             "| label | medians |", "| --- | --- |"]
    for label, med, runs in rows:
        extra = ""
        if "started_more_than_once" in runs[0]:
            extra = "; per run ok/failed/missing/re-started: " + ", ".join(
                f"{r.get('ok')}/{r.get('failed')}/{r.get('missing')}/{r.get('started_more_than_once')}" for r in runs)
        lines.append(f"| {label} | " + ", ".join(f"{k}={v}" for k, v in med.items()) + extra + " |")
    text = "\n".join(lines) + "\n"
    open(os.path.join(RES, f"summary-{int(time.time())}.md"), "w").write(text)
    print(text)
    print(json.dumps({label: med for label, med, _ in rows}), flush=True)  # last line: read by bench/run.py


if __name__ == "__main__":
    main()
