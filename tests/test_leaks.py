"""The executor and the client drop every reference to a job's callable, arguments and results once they
are no longer needed: equivalents of CPython's test_concurrent_futures `test_free_reference` (map's result
iterator keeps no result alive) and `test_no_stale_references` (an object passed to submit is freed once
its future is done and the caller dropped it), against a real local grid."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest

from jobgrid import Client, GridExecutor

from conftest import by_value

by_value(__name__)


class Dummy:
    def my_method(self) -> int:
        return 7


def make_dummy_object(_: int) -> Dummy:
    return Dummy()


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    from harness.local import LocalCluster
    c = LocalCluster(tmp_path_factory.mktemp("leaks"), replicas=2, runners=1, exit_with_parent=True)
    try:
        c.up(2)
        yield [n.url for n in c.nodes]
    finally:
        c.stop()


def _collected(wr: weakref.ref, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        gc.collect()
        if wr() is None:
            return True
        time.sleep(0.05)
    return False


def test_free_reference_map_results_are_not_kept(grid):
    with GridExecutor(grid) as ex:
        for obj in ex.map(make_dummy_object, range(10)):
            wr = weakref.ref(obj)
            del obj
            assert _collected(wr), f"a result of map is still referenced: {gc.get_referrers(wr())[:3]}"


def test_no_stale_references_to_a_submitted_callable(grid):
    for make in (lambda: GridExecutor(grid), lambda: Client(grid)):
        with make() as ex:
            my_object = Dummy()
            collected = threading.Event()
            wr = weakref.ref(my_object, lambda _: collected.set())
            fut = ex.submit(my_object.my_method)
            del my_object
            assert fut.result(timeout=60) == 7
            gc.collect()
            assert collected.wait(10) or _collected(wr), \
                f"{type(ex).__name__} keeps the submitted callable's object: {gc.get_referrers(wr())[:3]}"


def test_arguments_are_dropped_once_the_submission_is_acknowledged(grid):
    big = bytearray(1024)
    with Client(grid) as client:
        arg = Dummy()
        wr = weakref.ref(arg)
        fut = client.submit_job(len, (big,), {}, name="size", id="leak-arg-" + str(time.time_ns()))
        fut2 = client.submit(Dummy.my_method, arg)
        del arg
        assert fut.result(timeout=60) == 1024 and fut2.result(timeout=60) == 7
        assert _collected(wr), f"the client keeps a job's argument: {gc.get_referrers(wr())[:3]}"
