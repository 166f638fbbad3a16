"""Tests for harness.history: the recorder, the loader and the total-queue checker."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.history import (
    CheckResult,
    HistoryError,
    HistoryRecorder,
    check,
    load_history,
    main,
    summary_line,
)


def op(type_: str, f: str, id_: str, process: str = "c1", **extra: Any) -> dict[str, Any]:
    return {"time": 0.0, "process": process, "type": type_, "f": f, "id": id_, **extra}


def submitted(id_: str, outcome: str = "ok", process: str = "c1") -> list[dict[str, Any]]:
    return [op("invoke", "submit", id_, process), op(outcome, "submit", id_, process)]


def read(id_: str, value: Any = 1, process: str = "c1", **extra: Any) -> dict[str, Any]:
    return op("ok", "read", id_, process, value=value, **extra)


def complete(id_: str, **extra: Any) -> dict[str, Any]:
    return op("ok", "complete", id_, "grid", **extra)


# --------------------------------------------------------------------------- checker


def test_clean_history_is_valid() -> None:
    ops = [*submitted("a"), *submitted("b"), read("a", 1), read("b", 2), complete("a"), complete("b")]
    result = check(ops)
    assert result.valid
    assert result.attempted == result.acknowledged == result.ok == ("a", "b")
    assert result.lost == result.duplicated == result.unexpected == result.recovered == ()
    assert summary_line(result) == "VALID: 2 acknowledged, 2 ok, 0 lost, 0 duplicated, 0 unexpected, 0 recovered"


def test_acknowledged_job_without_result_is_lost() -> None:
    result = check([*submitted("a"), *submitted("b"), read("a")])
    assert not result.valid
    assert result.lost == ("b",)
    assert summary_line(result).startswith("INVALID: 2 acknowledged, 1 ok, 1 lost")


def test_failed_read_is_not_a_completion() -> None:
    result = check([*submitted("a"), op("invoke", "read", "a"), op("info", "read", "a", error="timeout")])
    assert result.lost == ("a",)


def test_two_complete_records_for_one_id_are_duplicated() -> None:
    result = check([*submitted("a"), *submitted("b"), complete("a"), complete("a"), complete("b")])
    assert not result.valid
    assert result.duplicated == ("a",)


def test_complete_count_above_one_is_duplicated() -> None:
    result = check([*submitted("a"), complete("a", count=2)])
    assert not result.valid
    assert result.duplicated == ("a",)


def test_two_reads_with_different_values_are_duplicated() -> None:
    result = check([*submitted("a"), read("a", {"x": 1}, "c1"), read("a", {"x": 2}, "c2")])
    assert not result.valid
    assert result.duplicated == ("a",)


def test_rereads_with_equal_values_are_not_duplicated() -> None:
    # Key order differs but the JSON value is the same: a re-poll, not a second run.
    ops = [*submitted("a"), read("a", {"x": 1, "y": 2}), read("a", {"y": 2, "x": 1}, "c2"), read("a", {"x": 1, "y": 2})]
    assert check(ops).valid


def test_same_process_receiving_two_deliveries_is_duplicated() -> None:
    ops = [*submitted("a"), read("a", 7, delivery=True), read("a", 7, delivery=True)]
    result = check(ops)
    assert not result.valid
    assert result.duplicated == ("a",)


def test_deliveries_to_different_processes_are_not_duplicated() -> None:
    ops = [*submitted("a"), read("a", 7, "c1", delivery=True), read("a", 7, "c2", delivery=True)]
    assert check(ops).valid


def test_result_for_unsubmitted_id_is_unexpected() -> None:
    result = check([*submitted("a"), read("a"), complete("ghost")])
    assert not result.valid
    assert result.unexpected == ("ghost",)
    assert result.lost == ()


def test_info_then_completed_is_recovered_and_still_valid() -> None:
    result = check([*submitted("a", "info"), read("a")])
    assert result.valid
    assert result.recovered == ("a",)
    assert result.acknowledged == ()
    assert result.failed_but_completed == ()


def test_invoke_without_outcome_then_completed_is_recovered() -> None:
    result = check([op("invoke", "submit", "a"), complete("a")])
    assert result.valid
    assert result.recovered == ("a",)


def test_fail_then_nothing_is_fine() -> None:
    result = check(submitted("a", "fail"))
    assert result.valid
    assert result.attempted == ("a",)
    assert result.lost == result.recovered == ()


def test_fail_then_completed_is_recovered_and_reported_separately() -> None:
    result = check([*submitted("a", "fail"), *submitted("b", "info"), complete("a"), complete("b")])
    assert result.valid
    assert result.recovered == ("a", "b")
    assert result.failed_but_completed == ("a",)
    assert "1 failed-but-completed" in summary_line(result)


def test_retry_that_is_eventually_acknowledged_counts_as_acknowledged() -> None:
    ops = [*submitted("a", "info"), *submitted("a", "ok")]
    result = check(ops)
    assert result.lost == ("a",)
    assert result.recovered == ()


def test_other_functions_such_as_nemesis_ops_are_ignored() -> None:
    ops = [*submitted("a"), read("a"), {"time": 1.0, "process": "nemesis", "type": "info", "f": "partition"}]
    assert check(ops).valid


def test_check_rejects_malformed_op_naming_its_index() -> None:
    with pytest.raises(HistoryError, match="op #2"):
        check([*submitted("a"), {"process": "c1", "type": "Ok", "f": "read", "id": "a"}])


def test_to_dict_is_jepsen_shaped_and_caps_lists() -> None:
    ids = [f"j{i:04d}" for i in range(1005)]
    ops = [o for i in ids for o in submitted(i)]
    d = check(ops).to_dict()
    assert d["valid?"] is False
    assert d["attempt-count"] == d["acknowledged-count"] == d["lost-count"] == 1005
    assert d["ok-count"] == d["duplicated-count"] == d["unexpected-count"] == d["recovered-count"] == 0
    assert d["lost"] == ids[:1000]
    assert d["lost-truncated"] is True
    assert "duplicated-truncated" not in d
    assert d["duplicated"] == d["unexpected"] == d["recovered"] == []
    json.dumps(d)


def test_check_result_is_frozen() -> None:
    result = check([])
    assert isinstance(result, CheckResult)
    with pytest.raises(AttributeError):
        result.valid = False  # type: ignore[misc]


# --------------------------------------------------------------------------- recorder and loader


def test_load_history_round_trips_through_recorder(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "history.jsonl"
    with HistoryRecorder(path) as rec:
        rec.invoke("c1", "submit", "a")
        rec.ok("c1", "submit", "a", node="n1")
        rec.invoke("c1", "submit", "b")
        rec.info("c1", "submit", "b", error="timeout")
        rec.invoke("c1", "submit", "c")
        rec.fail("c1", "submit", "c", error="rejected")
        rec.ok("c1", "read", "a", value={"digest": "abc", "n": [1, 2.5]})
        rec.record({"process": "grid", "type": "ok", "f": "complete", "id": "b", "count": 1})
        in_memory = rec.ops
    loaded = load_history(path)
    assert loaded == in_memory
    assert [o["type"] for o in loaded] == ["invoke", "ok", "invoke", "info", "invoke", "fail", "ok", "ok"]
    assert loaded[1]["node"] == "n1" and loaded[6]["value"] == {"digest": "abc", "n": [1, 2.5]}
    times = [o["time"] for o in loaded]
    assert times == sorted(times)
    result = check(loaded)
    assert result.valid and result.recovered == ("b",)


def test_recorder_writes_each_op_before_close(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    rec = HistoryRecorder(path)
    rec.invoke("c1", "submit", "a")
    assert len(load_history(path)) == 1  # flushed, not buffered until close
    rec.close()
    rec.close()
    with pytest.raises(RuntimeError):
        rec.ok("c1", "submit", "a")


def test_recorder_rejects_invalid_op_without_recording_it() -> None:
    rec = HistoryRecorder(None)
    with pytest.raises(HistoryError):
        rec.record({"process": "c1", "type": "done", "f": "submit", "id": "a"})
    with pytest.raises(TypeError):
        rec.ok("c1", "read", "a", value=object())
    assert rec.ops == []


def test_recorder_is_thread_safe(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    with HistoryRecorder(path) as rec:

        def client(n: int) -> None:
            for i in range(100):
                rec.invoke(f"c{n}", "submit", f"{n}-{i}")
                rec.ok(f"c{n}", "submit", f"{n}-{i}")

        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ops = rec.ops
    loaded = load_history(path)
    assert len(loaded) == len(ops) == 1600
    assert loaded == ops
    assert check(loaded).acknowledged_count == 800


def test_malformed_line_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    good = json.dumps(op("invoke", "submit", "a"))
    path.write_text(f"{good}\n\n{good}\n{{not json\n{good}\n")
    with pytest.raises(HistoryError, match=r"h\.jsonl:4: malformed JSON") as info:
        load_history(path)
    assert info.value.lineno == 4
    assert isinstance(info.value, ValueError)


def test_invalid_op_on_a_line_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps(op("invoke", "submit", "a")) + "\n" + json.dumps({"type": "ok", "f": "read"}) + "\n")
    with pytest.raises(HistoryError, match=r":2: .*'process'"):
        load_history(path)


def test_truncated_last_line_is_dropped_only_when_allowed(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps(op("invoke", "submit", "a")) + '\n{"time": 1.0, "proc')
    with pytest.raises(HistoryError, match=":2:"):
        load_history(path)
    assert len(load_history(path, allow_truncated_tail=True)) == 1


def test_main_exits_by_verdict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad, broken = tmp_path / "good.jsonl", tmp_path / "bad.jsonl", tmp_path / "broken.jsonl"
    for path, ops in ((good, [*submitted("a"), read("a")]), (bad, submitted("a"))):
        with HistoryRecorder(path) as rec:
            for o in ops:
                rec.record(o)
    broken.write_text("nope\n")
    assert main([str(good)]) == 0
    assert json.loads(capsys.readouterr().out)["valid?"] is True
    assert main([str(bad)]) == 1
    assert json.loads(capsys.readouterr().out)["lost"] == ["a"]
    assert main([str(broken)]) == 2
    assert main([]) == 2


# --------------------------------------------------------------------------- model-based property


SUBMIT_OUTCOMES = ("ok", "fail", "info", None)  # None: the client died before an outcome
COMPLETIONS = ("none", "read", "complete", "both")


@st.composite
def modelled_histories(draw: st.DrawFn) -> tuple[list[dict[str, Any]], set[str], set[str]]:
    """A random history plus the model's own lost and recovered sets.

    Only jobs whose submit was invoked may complete, never twice, so the
    model history is free of duplicates and unexpected results and the
    checker must report exactly the model's lost set.
    """
    n = draw(st.integers(min_value=0, max_value=30))
    ops: list[dict[str, Any]] = []
    lost: set[str] = set()
    recovered: set[str] = set()
    for i in range(n):
        job = f"job-{i}"
        process = f"c{draw(st.integers(0, 3))}"
        outcome = draw(st.sampled_from(SUBMIT_OUTCOMES))
        # A definitively failed submit almost never completes; still allowed.
        completion = draw(st.sampled_from(COMPLETIONS))
        ops.append(op("invoke", "submit", job, process))
        if outcome is not None:
            ops.append(op(outcome, "submit", job, process))
        if completion in ("read", "both"):
            ops.append(read(job, i, process, delivery=True))
        if completion in ("complete", "both"):
            ops.append(complete(job))
        done = completion != "none"
        if outcome == "ok" and not done:
            lost.add(job)
        if outcome != "ok" and done:
            recovered.add(job)
    ops = draw(st.permutations(ops))
    return ops, lost, recovered


@settings(max_examples=150, deadline=None)
@given(modelled_histories())
def test_checker_reports_exactly_the_models_lost_set(
    history: tuple[list[dict[str, Any]], set[str], set[str]],
) -> None:
    ops, lost, recovered = history
    result = check(ops)
    assert set(result.lost) == lost
    assert set(result.recovered) == recovered
    assert result.duplicated == result.unexpected == ()
    assert result.valid == (not lost)
