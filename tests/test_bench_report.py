"""The benchmark judges by ratios to systems measured in the same run, and never against a figure it did
not measure (bench/report.py: pure functions over a run's result dict)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import report  # noqa: E402
from report import ONE, THREE, Target  # noqa: E402


def _run(**peers: dict) -> dict:
    res = {"ppe": {"A_map": 5000.0, "C_wall": 2.0},
           THREE: {"A_map": 2600.0, "B_p50": 3.0, "B_p99": 7.0, "C_wall": 2.2, "E_arg_mb_s": 40.0},
           ONE: {"B_p50": 2.0}}
    if peers:
        res["peers"] = peers
    return res


def test_a_peer_target_without_the_peer_in_this_run_is_not_measured() -> None:
    res = _run()
    for t in report.TARGETS:
        if t.ref != "ppe":
            assert report.verdict(res, t) == (None, "not measured"), t


def test_ratios_are_taken_against_the_same_runs_reference_in_both_directions() -> None:
    res = _run(celery={"B_p50": 5.0, "B_p99": 6.0}, dask={"E_arg_mb_s": 100.0})
    assert report.verdict(res, Target("A_map", THREE, "ppe", ">=", 0.5)) == (0.52, "ok")
    assert report.verdict(res, Target("C_wall", THREE, "ppe", "<=", 1.05)) == (1.1, "MISS")
    assert report.verdict(res, Target("B_p50", THREE, "celery", "<=", 0.6)) == (0.6, "ok")
    assert report.verdict(res, Target("B_p99", THREE, "celery", "<=", 1.0))[1] == "MISS"
    assert report.verdict(res, Target("B_p50", ONE, "celery", "<=", 0.5)) == (0.4, "ok")
    assert report.verdict(res, Target("E_arg_mb_s", THREE, "dask", ">=", 0.5)) == (0.4, "MISS")


def test_a_figure_jobgrid_did_not_produce_is_not_measured_either() -> None:
    res = _run(dask={"E_result_mb_s": 80.0})
    assert report.verdict(res, Target("E_result_mb_s", THREE, "dask", ">=", 0.5)) == (None, "not measured")


def test_peer_medians_map_onto_the_figures_they_are_compared_with() -> None:
    med = {"celery A": {"tasks_per_s": 369}, "celery B": {"p50_ms": 4.75, "p99_ms": 5.97},
           "celery C": {"wall_s": 2.2}, "celery D default": {"ok": 19, "failed": 1, "missing": 0},
           "dask A map": {"tasks_per_s": 504}, "dask A submit": {"tasks_per_s": 461},
           "dask E": {"E_arg_mb_s": 91.0, "E_result_mb_s": 250.0, "E_many_mb_s": 76.0},
           "rq B": {"p50_ms": 20.4, "p99_ms": 23.7}}
    p = report.peers_from_medians(med)
    assert p["celery"] == {"A_submit": 369, "B_p50": 4.75, "B_p99": 5.97, "C_wall": 2.2,
                           "D": {"default": {"ok": 19, "failed": 1, "missing": 0}}}
    assert p["dask"]["A_map"] == 504 and p["dask"]["A_submit"] == 461
    assert (p["dask"]["E_arg_mb_s"], p["dask"]["E_result_mb_s"], p["dask"]["E_many_mb_s"]) == (91.0, 250.0, 76.0)
    assert p["rq"] == {"B_p50": 20.4, "B_p99": 23.7}


def test_rss_after_the_data_workload_and_a_failed_data_workload_are_judged() -> None:
    res = _run()
    res[THREE].update(E_rss_before=[51.0, 51.0, 51.0], E_rss_after=[240.0, 200.0, 200.0],
                      E_rss_idle=[149.0, 120.0, 151.0], E_ring_changes=1, E_error="JobNotFound: ...")
    rows = {fig: verdict for fig, _, _, verdict in report.extra_verdicts(res)}
    assert rows["node RSS after E (each node), MB"] == "MISS"  # one node at 151 MB
    assert rows["E: ring changes (false failure detections) / errors"] == "MISS"
