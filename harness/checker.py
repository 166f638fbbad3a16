"""The Jepsen-style ``total-queue`` checker of client histories (the format is in harness/history.py).

Duplicates fail the run, because a job grid promises each accepted job runs to one recorded result,
not "at least once".
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from .history import DEFAULT_LIST_LIMIT, OP_FUNCTIONS, HistoryError, _validate_op



@dataclasses.dataclass(frozen=True)
class CheckResult:
    """The verdict on one history; every id collection is a sorted tuple.

    * ``attempted``: ids with a submit invoke.
    * ``acknowledged``: ids with a submit ok.
    * ``ok``: ids with a completed result (a read ok or a complete op).
    * ``lost``: acknowledged but never completed.
    * ``duplicated``: results recorded or delivered more than once (see :func:`check`).
    * ``unexpected``: completed but never submitted.
    * ``recovered``: completed although no submit was acknowledged (info, fail
      or no outcome at all): the grid did accept it, which is allowed.
    * ``failed_but_completed``: the subset of ``recovered`` whose submits all
      *failed* definitively; allowed, but a sign that the client's "fail"
      is not truthful, so it is reported separately.

    ``valid`` is true only when ``lost``, ``duplicated`` and ``unexpected`` are empty.
    """

    valid: bool
    attempted: tuple[str, ...]
    acknowledged: tuple[str, ...]
    ok: tuple[str, ...]
    lost: tuple[str, ...]
    duplicated: tuple[str, ...]
    unexpected: tuple[str, ...]
    recovered: tuple[str, ...]
    failed_but_completed: tuple[str, ...]

    @property
    def attempt_count(self) -> int:
        return len(self.attempted)

    @property
    def acknowledged_count(self) -> int:
        return len(self.acknowledged)

    @property
    def ok_count(self) -> int:
        return len(self.ok)

    @property
    def lost_count(self) -> int:
        return len(self.lost)

    @property
    def duplicated_count(self) -> int:
        return len(self.duplicated)

    @property
    def unexpected_count(self) -> int:
        return len(self.unexpected)

    @property
    def recovered_count(self) -> int:
        return len(self.recovered)

    @property
    def failed_but_completed_count(self) -> int:
        return len(self.failed_but_completed)

    def to_dict(self, limit: int = DEFAULT_LIST_LIMIT) -> dict[str, Any]:
        """A Jepsen-style verdict dict (``"valid?"``, ``"lost-count"``, ``"lost"``, ...).

        Each id list is capped at ``limit`` entries, with ``"<name>-truncated": true``
        added when it was cut, so a catastrophic run still yields a verdict
        small enough to read and attach to a bug report; the counts stay exact.
        """
        out: dict[str, Any] = {
            "valid?": self.valid,
            "attempt-count": self.attempt_count,
            "acknowledged-count": self.acknowledged_count,
            "ok-count": self.ok_count,
            "lost-count": self.lost_count,
            "duplicated-count": self.duplicated_count,
            "unexpected-count": self.unexpected_count,
            "recovered-count": self.recovered_count,
            "failed-but-completed-count": self.failed_but_completed_count,
        }
        lists: Sequence[tuple[str, tuple[str, ...]]] = (
            ("lost", self.lost),
            ("duplicated", self.duplicated),
            ("unexpected", self.unexpected),
            ("recovered", self.recovered),
            ("failed-but-completed", self.failed_but_completed),
        )
        for name, ids in lists:
            out[name] = list(ids[:limit])
            if len(ids) > limit:
                out[f"{name}-truncated"] = True
        return out


def _canonical(value: Any) -> bytes:
    """Encode a result value canonically (sorted keys) so equal values compare equal.

    Two reads of one job must agree on the result; comparing encodings rather
    than Python objects makes ``{"a":1,"b":2}`` equal regardless of key order
    while keeping ``1`` and ``1.0`` and ``true`` distinct, as JSON does.
    """
    return msgspec.json.encode(value, order="sorted")


def check(ops: Iterable[Mapping[str, Any]]) -> CheckResult:
    """Check a history like Jepsen's ``total-queue``, with duplicates fatal.

    Order of ops does not matter: the checker reasons about sets, which keeps
    it robust to clock skew between the clients that wrote one history.

    An id is *duplicated* when any of these holds:

    * the grid reports more than one ``complete`` op for it, or a ``complete``
      op with ``count`` > 1 (the result was recorded twice: the job ran twice);
    * ``read`` ok ops for it carry two different ``value``\\ s (two runs with
      different outcomes reached clients); reads without ``value`` are not compared;
    * one process has more than one ``read`` ok op with ``delivery: true`` for
      it (the client's future resolved twice). Reads without the flag are
      re-polls of a known result and are allowed to repeat.

    Only ``ok`` reads and ``ok`` complete ops count as completions; ``fail`` and
    ``info`` reads are attempts that produced nothing. Raises :class:`HistoryError`
    naming the op's index when an op is malformed.
    """
    attempted: set[str] = set()
    acknowledged: set[str] = set()
    submit_outcomes: dict[str, set[str]] = defaultdict(set)
    completed: set[str] = set()
    complete_counts: Counter[str] = Counter()
    read_values: dict[str, set[bytes]] = defaultdict(set)
    deliveries: Counter[tuple[str, str]] = Counter()

    for index, raw in enumerate(ops):
        op = _validate_op(dict(raw) if isinstance(raw, Mapping) else raw, f"op #{index}")
        f, op_type = op["f"], op["type"]
        if f not in OP_FUNCTIONS:
            continue
        job_id: str = op["id"]
        if f == "submit":
            if op_type == "invoke":
                attempted.add(job_id)
            else:
                submit_outcomes[job_id].add(op_type)
                if op_type == "ok":
                    acknowledged.add(job_id)
        elif op_type != "ok":
            continue
        elif f == "complete":
            completed.add(job_id)
            complete_counts[job_id] += op.get("count", 1)
        else:  # read ok
            completed.add(job_id)
            if "value" in op:
                try:
                    read_values[job_id].add(_canonical(op["value"]))
                except (TypeError, msgspec.EncodeError) as e:
                    raise HistoryError(f"op #{index}: 'value' is not JSON-able: {e}") from e
            if op.get("delivery") is True:
                deliveries[(op["process"], job_id)] += 1

    # An ok submit without a recorded invoke still proves the client attempted it.
    attempted |= acknowledged | set(submit_outcomes)
    duplicated = {i for i, n in complete_counts.items() if n > 1}
    duplicated |= {i for i, values in read_values.items() if len(values) > 1}
    duplicated |= {i for (_process, i), n in deliveries.items() if n > 1}
    lost = acknowledged - completed
    unexpected = completed - attempted
    recovered = (completed & attempted) - acknowledged
    failed_but_completed = {i for i in recovered if submit_outcomes.get(i) == {"fail"}}

    return CheckResult(
        valid=not (lost or duplicated or unexpected),
        attempted=tuple(sorted(attempted)),
        acknowledged=tuple(sorted(acknowledged)),
        ok=tuple(sorted(completed)),
        lost=tuple(sorted(lost)),
        duplicated=tuple(sorted(duplicated)),
        unexpected=tuple(sorted(unexpected)),
        recovered=tuple(sorted(recovered)),
        failed_but_completed=tuple(sorted(failed_but_completed)),
    )


def summary_line(result: CheckResult) -> str:
    """A one-line verdict for logs and CI output, e.g.
    ``VALID: 2000 acknowledged, 2000 ok, 0 lost, 0 duplicated, 0 unexpected, 3 recovered``.
    """
    line = (
        f"{'VALID' if result.valid else 'INVALID'}: "
        f"{result.acknowledged_count} acknowledged, {result.ok_count} ok, "
        f"{result.lost_count} lost, {result.duplicated_count} duplicated, "
        f"{result.unexpected_count} unexpected, {result.recovered_count} recovered"
    )
    if result.failed_but_completed:
        line += f" ({result.failed_but_completed_count} failed-but-completed)"
    return line


