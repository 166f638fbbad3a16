"""Pure parts of the harness's fault layer: the registry, unit parsing, which Toxiproxy streams carry a
node's data, and the CLI's help lines. The faults themselves are exercised for real by the scenario tests."""

from __future__ import annotations

import pytest

from harness import units
from harness.cli import parser
from harness.errors import HarnessError
from harness.fault import Fault
from harness.faults import FAULTS, parse_names
from harness.proxies import data_streams


def test_every_fault_kind_is_one_registered_class_with_a_summary():
    assert set(FAULTS) >= {"kill", "kill2", "pause", "restart", "restart-all", "partition", "partition-toxiproxy",
                           "latency", "bandwidth", "blackhole", "reset", "slow-close", "flap"}
    for name, cls in FAULTS.items():
        assert issubclass(cls, Fault) and cls.name == name and cls.summary


def test_fault_names_are_checked_against_the_registry():
    assert parse_names("kill, pause,latency") == ["kill", "pause", "latency"]
    with pytest.raises(HarnessError, match="unknown fault nope"):
        parse_names("kill,nope")


def test_units():
    assert units.latency("200ms") == (200, 0)
    assert units.latency("1s:50ms") == (1000, 50)
    assert units.seconds("2s") == 2.0 and units.seconds("1.5") == 1.5 and units.seconds("500ms") == 0.5
    assert units.rate_kb("64KB/s") == 64 and units.rate_kb("1MB/s") == 1024 and units.rate_kb("50") == 50
    for bad, fn in (("fast", units.latency), ("10 parsecs", units.seconds), ("100B/s", units.rate_kb)):
        with pytest.raises(HarnessError):
            fn(bad)


def test_a_nodes_outgoing_data_is_upstream_on_links_it_opened_and_downstream_on_the_others():
    assert data_streams(("n1", "n2"), "n1", "out") == ["upstream"]
    assert data_streams(("n2", "n1"), "n1", "out") == ["downstream"]
    assert data_streams(("n1", "n2"), "n1", "in") == ["downstream"]
    assert data_streams(("client", "n1"), "n1", "in") == ["upstream"]
    assert data_streams(("n1", "n2"), "n2", "both") == ["upstream", "downstream"]
    with pytest.raises(HarnessError):
        data_streams(("n1", "n2"), "n1", "sideways")


def test_every_harness_option_has_a_help_line_naming_its_default_or_unit():
    p = parser()
    for name, sub in p._subparsers._group_actions[0].choices.items():  # noqa: SLF001
        for action in sub._actions:  # noqa: SLF001
            if not action.option_strings or action.dest == "help":
                continue
            h = action.help or ""
            assert h, f"harness {name} {action.option_strings[0]} has no help line"
            if action.nargs != 0:  # options that take a value say their default (or unit)
                assert "default" in h or "unit" in h or "e.g." in h, f"harness {name} {action.option_strings[0]}: {h}"


def test_soak_charges_latency_and_reruns_to_the_fault_window_they_fell_in():
    from harness.soak import _window_at, latency_per_window
    windows = [{"kind": "kill", "nodes": ["n2"], "start": 10.0, "end": 20.0},
               {"kind": "pause", "nodes": ["n3"], "start": 30.0, "end": 35.0}]
    rows = latency_per_window([(5.0, 0.01), (12.0, 2.0), (13.0, 1.0), (31.0, 0.5)], windows)
    assert rows == [{"window": "no fault", "submits": 1, "p99_ms": 10.0, "max_ms": 10.0},
                    {"window": "#1 kill n2", "submits": 2, "p99_ms": 2000.0, "max_ms": 2000.0},
                    {"window": "#2 pause n3", "submits": 1, "p99_ms": 500.0, "max_ms": 500.0}]
    assert _window_at(windows, 5.0) is None
    assert _window_at(windows, 25.0) == 0   # after a window: the last fault that began is charged
    assert _window_at(windows, 31.0) == 1
