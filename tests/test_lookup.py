"""The pure rule behind "no server knows this job": absent only from a settled grid (jobgrid.lookup)."""

from __future__ import annotations

from jobgrid.lookup import conclude, merge
from jobgrid.protocol import JobRecord, JobSpec, LookupResponse, Result

MEMBERS = ["a", "b", "c", "d", "e"]


def rec(i: str, owner: str = "a") -> JobRecord:
    return JobRecord(spec=JobSpec(id=i, kind="call", target="m:f"), owner=owner)


def test_every_member_answered_on_a_serving_node_and_unchanged_ring_means_absent():
    v = conclude(["x", "y"], {"y": rec("y")}, answered=MEMBERS, members=MEMBERS, serving=True, same_ring=True)
    assert v.absent == ("x",) and v.undetermined == () and set(v.found) == {"y"}


def test_one_silent_member_makes_it_undetermined_even_with_a_majority():
    v = conclude(["x"], {}, answered=["a", "b", "c", "d"], members=MEMBERS, serving=True, same_ring=True)
    assert v.absent == () and v.undetermined == ("x",)


def test_a_node_without_quorum_or_a_moving_ring_cannot_say_absent():
    assert conclude(["x"], {}, answered=MEMBERS, members=MEMBERS, serving=False, same_ring=True).undetermined == ("x",)
    assert conclude(["x"], {}, answered=MEMBERS, members=MEMBERS, serving=True, same_ring=False).undetermined == ("x",)
    assert conclude(["x"], {}, answered=[], members=[], serving=True, same_ring=True).undetermined == ("x",)


def test_a_held_copy_without_a_record_counts_as_found():
    v = conclude(["x"], {"x": None}, answered=["a"], members=MEMBERS, serving=True, same_ring=True)
    assert v.found == {"x": None} and v.absent == () and v.undetermined == ()


def test_merge_prefers_results_over_records_over_bare_copies():
    res = Result(job_id="x", state="succeeded")
    found = merge({"x": None, "y": None}, [LookupResponse(results=[], jobs=[rec("x"), rec("y")]), None,
                                             LookupResponse(results=[res], jobs=[rec("x", "b")])])
    assert found["x"] == res
    assert isinstance(found["y"], JobRecord) and found["y"].owner == "a"
