"""The pure job lifecycle: every transition from events alone (no sockets, no sleeps, no clock)."""

from __future__ import annotations

import msgspec
import pytest

from jobgrid.node.lifecycle import (
    MAX_DELAY, Adopt, CancelAsked, DependenciesSettled, DropResults, ExpireLeases, Finish, Forward, JobState, Lease,
    LeaseAsked, LeasesLapsed, Lifecycle, OwnerChanged, Policy, Released, ReleaseLeases, Renew, RenewAsked, Reported,
    Requeue, ResultsExpired, Store, Submitted, Unknown,
)
from jobgrid.protocol import JobRecord, JobSpec, Result

NOW = 1_000_000.0
ME = "owner1"


def machine(**kw) -> Lifecycle:
    return Lifecycle(Policy(lease_ttl=kw.pop("lease_ttl", 3.0), max_crashes=kw.pop("max_crashes", 3)),
                     rand=lambda: 0.5)


def spec(i: str, **kw) -> JobSpec:
    return JobSpec(id=i, kind="call", target="m:f", **kw)


def rec(i: str, state: str = "queued", owner: str = ME, **kw) -> JobRecord:
    s = spec(i, **kw.pop("spec", {}))
    return JobRecord(spec=s, owner=owner, state=state, submitted_at=NOW - 10, **kw)


def result(i: str, state: str = "succeeded", **kw) -> Result:
    return Result(job_id=i, state=state, node="runner", **kw)


# ---- submitted -----------------------------------------------------------------------------------------
def test_submitted_jobs_are_queued_from_run_at_or_waiting_on_dependencies():
    out = machine().handle(Submitted(cause="c1", now=NOW, owner=ME, specs=[
        spec("a"), spec("b", run_at=NOW + 5), spec("c", after=["a"])]))
    assert len(out) == 1 and isinstance(out[0], Store) and out[0].cause == "c1"
    by = {r.spec.id: r for r in out[0].records}
    assert by["a"].state == JobState.QUEUED and by["a"].not_before == 0.0
    assert by["b"].state == JobState.QUEUED and by["b"].not_before == NOW + 5
    assert by["c"].state == JobState.WAITING
    assert all(r.owner == ME and r.submitted_at == NOW and r.attempts == 0 for r in by.values())


def test_a_run_at_beyond_the_horizon_is_refused():
    with pytest.raises(ValueError, match="years ahead"):
        machine().handle(Submitted(cause="c", now=NOW, owner=ME, specs=[spec("far", run_at=NOW + MAX_DELAY + 1)]))


# ---- leased, stolen, renewed -----------------------------------------------------------------------------
def test_a_lease_runs_for_the_lease_ttl_and_names_a_thief():
    m = machine(lease_ttl=4.0)
    own = m.handle(LeaseAsked(cause="c", now=NOW, owner=ME, holder=ME, count=5, serving=True, holder_known=True))
    assert own == [Lease(cause="c", holder=ME, count=5, until=NOW + 4.0, stolen=False)]
    thief = m.handle(LeaseAsked(cause="c", now=NOW, owner=ME, holder="n2", count=2, serving=True, holder_known=True))
    assert thief == [Lease(cause="c", holder="n2", count=2, until=NOW + 4.0, stolen=True)]


@pytest.mark.parametrize("serving,known,count", [(False, True, 3), (True, False, 3), (True, True, 0)])
def test_no_lease_without_quorum_for_a_stranger_or_for_nothing(serving, known, count):
    assert machine().handle(LeaseAsked(cause="c", now=NOW, owner=ME, holder="n2", count=count, serving=serving,
                                       holder_known=known)) == []


def test_renew_extends_by_the_lease_ttl_only_while_serving():
    m = machine(lease_ttl=2.0)
    assert m.handle(RenewAsked(cause="c", now=NOW, holder="n2", ids=["a", "b"], serving=True)) == [
        Renew(cause="c", holder="n2", ids=["a", "b"], until=NOW + 2.0)]
    assert m.handle(RenewAsked(cause="c", now=NOW, holder="n2", ids=["a"], serving=False)) == []


# ---- reported -------------------------------------------------------------------------------------------
def test_a_success_is_finished_with_the_spec_s_kind_name_submission_time_and_ttl():
    held = {"a": rec("a", "leased", attempts=1, spec={"name": "job-a", "result_ttl": 60.0})}
    out = machine().handle(Reported(cause="c", now=NOW, owner=ME, results=[result("a")], held=held))
    assert len(out) == 1 and isinstance(out[0], Finish)
    r = out[0].results[0]
    assert (r.state, r.kind, r.name, r.submitted_at) == ("succeeded", "call", "job-a", NOW - 10)
    assert out[0].ttl == {"a": 60.0}


def test_results_for_jobs_not_owned_here_are_unknown():
    held = {"b": rec("b", "queued", owner="someone-else")}
    out = machine().handle(Reported(cause="c", now=NOW, owner=ME, results=[result("a"), result("b")], held=held))
    assert out == [Unknown(cause="c", ids=["a", "b"])]


def test_a_failure_with_retries_left_is_requeued_with_a_growing_back_off():
    m = machine()
    for attempts, delay in [(1, 0.1), (2, 0.2), (3, 0.4)]:
        held = {"a": rec("a", "leased", attempts=attempts, spec={"max_retries": 5})}
        out = m.handle(Reported(cause="c", now=NOW, owner=ME, results=[result("a", "failed", error_type="X")],
                                held=held))
        assert [type(i) for i in out] == [Requeue]
        again = out[0].records[0]
        assert again.state == JobState.QUEUED and again.attempts == attempts
        assert again.not_before == pytest.approx(NOW + delay)  # jitter 0.5 + rand(0.5) = 1.0


def test_a_failure_past_its_retries_or_not_in_retry_on_is_final():
    m = machine()
    spent = {"a": rec("a", "leased", attempts=3, spec={"max_retries": 2})}
    out = m.handle(Reported(cause="c", now=NOW, owner=ME, results=[result("a", "failed", error_type="X")], held=spent))
    assert [type(i) for i in out] == [Finish]
    other = {"b": rec("b", "leased", attempts=1, spec={"max_retries": 5, "retry_on": ["KeyError"]})}
    out = m.handle(Reported(cause="c", now=NOW, owner=ME,
                            results=[result("b", "failed", error_type="builtins.ValueError")], held=other))
    assert [type(i) for i in out] == [Finish]
    match = {"b": rec("b", "leased", attempts=1, spec={"max_retries": 5, "retry_on": ["KeyError"]})}
    out = m.handle(Reported(cause="c", now=NOW, owner=ME,
                            results=[result("b", "failed", error_type="builtins.KeyError")], held=match))
    assert [type(i) for i in out] == [Requeue]


def test_a_crash_is_retried_up_to_the_crash_limit_then_finished_naming_it():
    m = machine(max_crashes=3)
    crash = result("a", "failed", error_type="WorkerCrashed", error="worker died")
    out = m.handle(Reported(cause="c", now=NOW, owner=ME, results=[crash], held={"a": rec("a", "leased", crashes=1)}))
    assert [type(i) for i in out] == [Requeue] and out[0].records[0].crashes == 2
    assert out[0].records[0].not_before == 0.0
    out = m.handle(Reported(cause="c", now=NOW, owner=ME, results=[crash], held={"a": rec("a", "leased", crashes=2)}))
    assert [type(i) for i in out] == [Finish]
    assert "killed its worker process 3 times" in out[0].results[0].error
    assert crash.error == "worker died"  # the event's own result is never changed


def test_one_report_can_finish_requeue_and_reject_at_once():
    held = {"ok": rec("ok", "leased"), "again": rec("again", "leased", attempts=1, spec={"max_retries": 1})}
    out = machine().handle(Reported(cause="c", now=NOW, owner=ME, held=held, results=[
        result("ok"), result("again", "failed", error_type="E"), result("stranger")]))
    assert [type(i) for i in out] == [Requeue, Finish, Unknown]
    assert [r.spec.id for r in out[0].records] == ["again"]
    assert [r.job_id for r in out[1].results] == ["ok"]
    assert out[2].ids == ["stranger"]


# ---- lapsed, released --------------------------------------------------------------------------------------
def test_lapsed_leases_return_to_the_queue_by_time_or_by_departed_holder():
    m = machine()
    assert m.handle(LeasesLapsed(cause="s", now=NOW)) == [ExpireLeases(cause="s", before=NOW, holders=None)]
    assert m.handle(LeasesLapsed(cause="s", now=NOW, holders=["n3"])) == [
        ExpireLeases(cause="s", before=NOW, holders=["n3"])]


def test_leases_held_outside_the_ring_lapse_after_a_ring_change_or_an_adoption():
    assert machine().handle(LeasesLapsed(cause="r", now=NOW, members=["n2", "me"])) == [
        ExpireLeases(cause="r", before=NOW, members=["me", "n2"])]


def test_released_prefetch_goes_back_unstarted():
    assert machine().handle(Released(cause="r", now=NOW, holder=ME, ids=["a", "b"])) == [
        ReleaseLeases(cause="r", holder=ME, ids=["a", "b"])]
    assert machine().handle(Released(cause="r", now=NOW, holder=ME, ids=[])) == []


# ---- cancel asked -----------------------------------------------------------------------------------------
def test_cancel_finishes_owned_live_jobs_forwards_replicas_and_names_strangers():
    held = {"w": rec("w", "waiting"), "q": rec("q", "queued"), "l": rec("l", "leased", attempts=1),
            "rep": rec("rep", "queued", owner="n2")}
    out = machine().handle(CancelAsked(cause="x", now=NOW, owner=ME, ids=["w", "q", "l", "rep", "gone"], held=held))
    assert [type(i) for i in out] == [Finish, Forward, Unknown]
    fin = {r.job_id: r for r in out[0].results}
    assert set(fin) == {"w", "q", "l"} and all(r.state == "cancelled" for r in fin.values())
    assert fin["l"].error == "cancelled while running" and fin["q"].error == "cancelled before it ran"
    assert fin["l"].attempts == 1 and fin["q"].finished_at == NOW
    assert out[1] == Forward(cause="x", owner="n2", ids=["rep"])
    assert out[2] == Unknown(cause="x", ids=["gone"])


# ---- dependencies ---------------------------------------------------------------------------------------
def test_dependencies_release_fail_or_keep_waiting():
    waiting = [rec("ready", "waiting", spec={"after": ["d1"], "run_at": NOW + 3}),
               rec("doomed", "waiting", spec={"after": ["d1", "d2"], "result_ttl": 5.0}),
               rec("patient", "waiting", spec={"after": ["d1", "d3"]})]
    results = {"d1": result("d1"), "d2": result("d2", "cancelled")}
    out = machine().handle(DependenciesSettled(cause="d", now=NOW, owner=ME, waiting=waiting, results=results))
    assert [type(i) for i in out] == [Requeue, Finish]
    released = out[0].records[0]
    assert released.spec.id == "ready" and released.state == JobState.QUEUED and released.not_before == NOW + 3
    failed = out[1].results[0]
    assert failed.job_id == "doomed" and failed.state == "failed" and failed.error_type == "DependencyFailed"
    assert "d2" in failed.error and out[1].ttl == {"doomed": 5.0}


def test_only_owned_waiting_jobs_are_settled():
    waiting = [rec("replica", "waiting", owner="n2", spec={"after": ["d1"]}),
               rec("queued", "queued", spec={"after": ["d1"]})]
    assert machine().handle(DependenciesSettled(cause="d", now=NOW, owner=ME, waiting=waiting,
                                                results={"d1": result("d1")})) == []


# ---- owner changed, results expired ---------------------------------------------------------------------------
def test_owner_change_adopts_all_or_some_rows():
    m = machine()
    assert m.handle(OwnerChanged(cause="p", now=NOW, old="dead", new=ME)) == [
        Adopt(cause="p", old="dead", new=ME, ids=None)]
    assert m.handle(OwnerChanged(cause="p", now=NOW, old="dead", new=ME, ids=["a"])) == [
        Adopt(cause="p", old="dead", new=ME, ids=["a"])]
    assert m.handle(OwnerChanged(cause="p", now=NOW, old="dead", new=ME, ids=[])) == []
    assert m.handle(OwnerChanged(cause="p", now=NOW, old=ME, new=ME)) == []


def test_expired_results_are_dropped():
    assert machine().handle(ResultsExpired(cause="e", now=NOW, ids=["a"])) == [DropResults(cause="e", ids=["a"])]
    assert machine().handle(ResultsExpired(cause="e", now=NOW, ids=[])) == []


def test_every_instruction_keeps_the_event_s_causal_id():
    m = machine()
    held = {"a": rec("a", "leased"), "b": rec("b", "leased", attempts=1, spec={"max_retries": 1})}
    events = [
        Submitted(cause="k", now=NOW, owner=ME, specs=[spec("a")]),
        LeaseAsked(cause="k", now=NOW, owner=ME, holder=ME, count=1, serving=True, holder_known=True),
        RenewAsked(cause="k", now=NOW, holder=ME, ids=["a"], serving=True),
        Reported(cause="k", now=NOW, owner=ME, results=[result("a"), result("b", "failed"), result("z")], held=held),
        LeasesLapsed(cause="k", now=NOW), Released(cause="k", now=NOW, holder=ME, ids=["a"]),
        CancelAsked(cause="k", now=NOW, owner=ME, ids=["a", "z"], held=held),
        OwnerChanged(cause="k", now=NOW, old="x", new=ME), ResultsExpired(cause="k", now=NOW, ids=["a"]),
    ]
    out = [i for e in events for i in m.handle(e)]
    assert len(out) >= 11 and {i.cause for i in out} == {"k"}


def test_an_unknown_event_is_a_type_error():
    with pytest.raises(TypeError):
        machine().handle(msgspec.Struct())  # type: ignore[arg-type]
