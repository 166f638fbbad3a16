"""Targets as ratios to the systems measured in the same run, and the tables and chart that show them.

No absolute time is a target: the machine's speed varies 2x between runs and machines. A target
names a jobgrid figure, a reference system measured in the same `bench/run.py` run and the ratio
required. A reference that was not measured in this run (no `--peers`) makes the target
"not measured", never a comparison with an old figure.
"""

from __future__ import annotations

from dataclasses import dataclass

ONE, THREE = "1 node", "3 nodes R=3"
SYSTEMS = ("ppe", "celery", "dask", "rq")
NAMES = {"ppe": "PPE(2)", "celery": "Celery+Redis", "dask": "Dask", "rq": "RQ+Redis"}


@dataclass(frozen=True)
class Target:
    key: str     # the figure, e.g. "A_map"
    grid: str    # which jobgrid column it judges
    ref: str     # the system it is compared with (measured in the same run)
    op: str      # ">=" (more is better) or "<="
    ratio: float

    @property
    def text(self) -> str:
        return f"{self.op} {self.ratio:g}x {NAMES[self.ref]}"


# issue 16: A >= 0.5x PPE; B p50 <= 0.6x Celery (1 node 0.5x), p99 <= Celery; C <= 1.05x PPE; E >= 0.5x Dask
TARGETS = [
    Target("A_submit", THREE, "ppe", ">=", 0.5),
    Target("A_map", THREE, "ppe", ">=", 0.5),
    Target("B_p50", THREE, "celery", "<=", 0.6),
    Target("B_p99", THREE, "celery", "<=", 1.0),
    Target("B_p50", ONE, "celery", "<=", 0.5),
    Target("C_wall", ONE, "ppe", "<=", 1.05),
    Target("C_wall", THREE, "ppe", "<=", 1.05),
    Target("E_arg_mb_s", THREE, "dask", ">=", 0.5),
    Target("E_result_mb_s", THREE, "dask", ">=", 0.5),
    Target("E_many_mb_s", THREE, "dask", ">=", 0.5),
]
RSS_AFTER_E_MB = 150.0  # memory, not time: an absolute bound is meaningful here
DEPTH_FLAT = 1.5        # deep / empty queue, for each latency and the RSS

# figure key -> (label, format, the system its ratios are printed against)
ROWS = [
    ("A_submit", "A submit, jobs/s", ".0f", "ppe"),
    ("A_map", "A map, jobs/s", ".0f", "ppe"),
    ("B_p50", "B p50, ms", ".2f", "celery"),
    ("B_p99", "B p99, ms", ".2f", "celery"),
    ("C_wall", "C wall, s (ideal 2.0)", ".2f", "ppe"),
    ("E_arg_mb_s", "E 16 MB argument, MB/s", ".1f", "dask"),
    ("E_result_mb_s", "E 40 MB result, MB/s", ".1f", "dask"),
    ("E_many_mb_s", "E 200 x 256 KB arguments, MB/s", ".1f", "dask"),
]


def peers_from_medians(med: dict) -> dict[str, dict]:
    """bench/peers/run_all.py's {label: medians} as {system: {figure key: value}}."""
    out: dict[str, dict] = {}

    def put(system: str, key: str, label: str, metric: str) -> None:
        v = med.get(label, {}).get(metric)
        if v is not None:
            out.setdefault(system, {})[key] = v

    for s in ("celery", "rq", "dask"):
        a_label = f"{s} A map" if s == "dask" else f"{s} A"
        put(s, "A_submit", f"{s} A submit" if s == "dask" else f"{s} A", "tasks_per_s")
        if s == "dask":
            put(s, "A_map", a_label, "tasks_per_s")
        put(s, "B_p50", f"{s} B", "p50_ms")
        put(s, "B_p99", f"{s} B", "p99_ms")
        put(s, "C_wall", f"{s} C", "wall_s")
        for label, m in med.items():
            if label.startswith(f"{s} D") and "ok" in m:
                out.setdefault(s, {}).setdefault("D", {})[label[len(s) + 3:] or "default"] = m
    for k in ("E_arg_mb_s", "E_result_mb_s", "E_many_mb_s", "E_gen_s"):
        put("dask", k, "dask E", k)
    return out


def reference(res: dict, system: str) -> dict:
    return res.get("ppe", {}) if system == "ppe" else res.get("peers", {}).get(system, {})


def verdict(res: dict, t: Target) -> tuple[float | None, str]:
    """(measured ratio, "ok" / "MISS" / "not measured")."""
    v = res.get(t.grid, {}).get(t.key)
    ref = reference(res, t.ref).get(t.key)
    if v is None or not ref:
        return None, "not measured"
    r = v / ref
    return r, "ok" if (r >= t.ratio if t.op == ">=" else r <= t.ratio) else "MISS"


def extra_verdicts(res: dict) -> list[tuple[str, str, str, str]]:
    """(figure, target, measured, verdict) for D, the RSS after E and the queue depth."""
    out = []
    for col in (ONE, THREE):
        d = res.get(col, {}).get("D")
        if d:
            good = d["ok"] == 20 and d["reruns"] <= 1 and d["duplicates"] == 0
            out.append((f"D worker SIGKILL, {col}", "20 ok, <= 1 re-run, 0 dup",
                        f"{d['ok']} ok / {d['failed']} failed / {d['reruns']} re-run / {d['duplicates']} dup",
                        "ok" if good else "MISS"))
    e = res.get(THREE, {})
    if "E_ring_changes" in e:
        out.append(("E: ring changes (false failure detections) / errors", "0 / none",
                    f"{e['E_ring_changes']} / {e.get('E_error', 'none')}",
                    "ok" if not e["E_ring_changes"] and "E_error" not in e else "MISS"))
    if "E_rss_idle" in e:
        top = max(e["E_rss_idle"])
        out.append(("node RSS after E (each node), MB", f"< {RSS_AFTER_E_MB:.0f}",
                    f"{' / '.join(f'{x:.0f}' for x in e['E_rss_idle'])} (right after: "
                    f"{' / '.join(f'{x:.0f}' for x in e['E_rss_after'])}; before: "
                    f"{' / '.join(f'{x:.0f}' for x in e['E_rss_before'])})",
                    "ok" if top < RSS_AFTER_E_MB else "MISS"))
    if "depth" in res:
        d = res["depth"]
        for k, label in (("servers_rtt_ms", "GET /servers"), ("submit_ms", "one acked submit"),
                         ("steal_ms", "one steal"), ("rss_mb", "node RSS")):
            r = d["deep"][k] / d["empty"][k]
            out.append((f"depth: {label}, {d['n']:,} queued / empty", f"<= {DEPTH_FLAT:g}x",
                        f"{r:.2f}x ({d['deep'][k]:.2f} / {d['empty'][k]:.2f})", "ok" if r <= DEPTH_FLAT else "MISS"))
    return out


def print_report(res: dict, stamp: str) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=220)
    judged = {(t.key, t.grid): t for t in TARGETS}
    t = Table(title=f"jobgrid benchmark {stamp}: figures, and each jobgrid figure's ratio to the system named")
    t.add_column("figure")
    for col in (THREE, ONE, *SYSTEMS):
        t.add_column(NAMES.get(col, f"jobgrid {col}"), justify="right")
    peers_run = "peers" in res
    for key, label, fmt, ref in ROWS:
        cells = []
        refv = reference(res, ref).get(key)
        for col in (THREE, ONE):
            v = res.get(col, {}).get(key)
            if v is None:
                cells.append("-")
                continue
            s = format(v, fmt)
            s += f" ({v / refv:.2f}x {ref})" if refv else f" ({ref} not measured)"
            tgt = judged.get((key, col))
            if tgt is not None:
                s += f" {verdict(res, tgt)[1]}" if refv else ""
            cells.append(s)
        for sysname in SYSTEMS:
            v = reference(res, sysname).get(key)
            cells.append(format(v, fmt) if v is not None else ("not measured" if sysname != "ppe" and not peers_run
                                                               else "-"))
        t.add_row(label, *cells)
    cpu = []
    for col in (THREE, ONE):
        r = res.get(col, {})
        cpu.append(" / ".join(f"{r[k][0]:.2f} + {r[k][1]:.2f}" for k in ("A_submit_cpu", "A_map_cpu") if k in r) or "-")
    t.add_row("A CPU ms/job, submit / map (node processes + their workers)", *cpu, *([""] * len(SYSTEMS)))
    con.print(t)

    v = Table(title="targets (ratios to systems measured in this run)")
    for c_ in ("figure", "column", "target", "ratio", "verdict"):
        v.add_column(c_)
    for tg in TARGETS:
        r, word = verdict(res, tg)
        v.add_row(tg.key, tg.grid, tg.text, "-" if r is None else f"{r:.2f}x", word)
    for fig, tgt, val, word in extra_verdicts(res):
        v.add_row(fig, "", tgt, val, word)
    con.print(v)

    if "scaling" in res:
        s = Table(title="scaling (A via map)")
        for c_ in ("nodes", "runners/node", "jobs/s", "node CPU ms/job", "worker CPU ms/job"):
            s.add_column(c_, justify="right")
        for row in res["scaling"]:
            s.add_row(str(row["nodes"]), str(row["runners"]), f"{row['jobs_per_s']:.0f}",
                      f"{row['node_cpu_ms']:.2f}", f"{row['worker_cpu_ms']:.2f}")
        con.print(s)
    for sysname, figs in res.get("peers", {}).items():
        if "D" in figs:
            con.print(f"{NAMES[sysname]} D: " + "; ".join(
                f"{k}: {m.get('ok')} ok / {m.get('failed')} failed / {m.get('missing')} missing"
                for k, m in figs["D"].items()))
    if "load" in res:
        con.print(f"load average before / after: {res['load']['before']} / {res['load']['after']}")


def chart(res: dict, path) -> None:
    """One bar per target: the measured ratio, and the required one as a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(f"{t.key}\n{t.grid}\nvs {t.ref}", verdict(res, t)[0], t.ratio) for t in TARGETS]
    fig, ax = plt.subplots(figsize=(14, 4))
    xs = range(len(rows))
    ax.bar(xs, [r or 0 for _, r, _ in rows], color=["tab:blue" if r else "lightgray" for _, r, _ in rows])
    ax.scatter(xs, [t for _, _, t in rows], color="red", marker="_", s=600, label="target ratio", zorder=3)
    ax.set_xticks(list(xs), [lab for lab, _, _ in rows], fontsize=7)
    ax.set_ylabel("jobgrid / reference")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
