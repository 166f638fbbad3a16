"""Durations and rates as people type them on the command line: `200ms`, `2s`, `1.5`, `64KB/s`."""

from __future__ import annotations

import re

from .errors import HarnessError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb)?(?:/s)?\s*$", re.IGNORECASE)


def duration_ms(text: str, default_unit: str = "ms") -> int:
    """`200ms` -> 200, `2s` -> 2000, `1m` -> 60000; a bare number is in `default_unit`."""
    m = _DURATION.match(text)
    if not m:
        raise HarnessError(f"{text!r} is not a duration (e.g. 200ms, 2s)")
    value, unit = float(m.group(1)), m.group(2) or default_unit
    return int(round(value * {"ms": 1, "s": 1000, "m": 60000}[unit]))


def seconds(text: str) -> float:
    """`2s` -> 2.0, `500ms` -> 0.5; a bare number is seconds."""
    return duration_ms(text, default_unit="s") / 1000.0


def latency(text: str) -> tuple[int, int]:
    """`200ms[:50ms]` -> (latency ms, jitter ms)."""
    lat, _, jitter = text.partition(":")
    return duration_ms(lat), duration_ms(jitter) if jitter else 0


def rate_kb(text: str) -> int:
    """`64KB/s` -> 64 (KB/s, Toxiproxy's bandwidth unit); `1MB/s` -> 1024; a bare number is KB/s."""
    m = _RATE.match(text)
    if not m:
        raise HarnessError(f"{text!r} is not a rate (e.g. 64KB/s, 1MB/s)")
    value, unit = float(m.group(1)), (m.group(2) or "kb").lower()
    kb = value * {"b": 1 / 1024, "kb": 1, "mb": 1024}[unit]
    if kb < 1:
        raise HarnessError(f"{text!r}: the lowest rate Toxiproxy can set is 1 KB/s")
    return int(kb)
