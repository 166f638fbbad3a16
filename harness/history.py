"""Client-operation histories and a Jepsen-style ``total-queue`` checker.

Why this exists: the only honest way to claim that the grid "withstands
failure" is to record what every client *asked for* and what it *got back*
while faults are injected, and then check the record afterwards. Unit tests
cannot see lost or doubly-run jobs that only appear under partitions and
crashes; a history can.

History format (JSON lines, one op per line)::

    {"time": 12.5, "process": "c1", "type": "invoke", "f": "submit", "id": "j1"}
    {"time": 12.6, "process": "c1", "type": "ok",     "f": "submit", "id": "j1", "node": "n2"}
    {"time": 14.0, "process": "c1", "type": "ok",     "f": "read",   "id": "j1", "value": 42}
    {"time": 99.0, "process": "grid", "type": "ok",   "f": "complete", "id": "j1", "count": 1}

* ``type`` is ``invoke``, ``ok``, ``fail`` (definitely did not happen) or
  ``info`` (outcome unknown: a timeout, a connection dropped after sending).
* ``f`` is ``submit``, ``read`` (a result the client obtained) or ``complete``
  (a result row the grid's own store reports at the end of a run, with
  ``count`` = how many times the grid says it recorded it, default 1).
  Ops with any other ``f`` (e.g. nemesis events) are kept but not checked.
* Optional fields: ``value`` (reads: a JSON-able form of the result, or a
  digest of it), ``node``, ``error``, ``delivery`` (reads: ``true`` when this
  read is a distinct delivery to the client, e.g. a future resolving, rather
  than a re-poll of an already known result), ``count`` (complete ops).

The checker (:func:`check`) is Jepsen's ``total-queue`` with one change:
duplicates fail the run, because a job grid promises each accepted job runs
to one recorded result, not "at least once".
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

import msgspec

from jobgrid.errors import JobgridError

__all__ = [
    "CheckResult",
    "HistoryError",
    "HistoryRecorder",
    "OP_FUNCTIONS",
    "OP_TYPES",
    "check",
    "load_history",
    "main",
    "summary_line",
]

#: The four Jepsen op types; ``info`` means the outcome is unknown.
OP_TYPES: Final = frozenset({"invoke", "ok", "fail", "info"})
#: The op functions the checker understands; others are carried but ignored.
OP_FUNCTIONS: Final = frozenset({"submit", "read", "complete"})
#: Default cap on each id list in :meth:`CheckResult.to_dict`, so a verdict
#: for a run that lost 100k jobs stays readable and small.
DEFAULT_LIST_LIMIT: Final = 1000

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


class HistoryError(JobgridError, ValueError):
    """A history (file or in-memory op) is malformed.

    It is a ``ValueError`` because the input is wrong rather than the grid;
    ``lineno`` (1-based) and ``path`` say where, when the op came from a file,
    so a corrupt multi-megabyte history can be fixed by hand.
    """

    def __init__(self, message: str, *, lineno: int | None = None, path: Path | None = None) -> None:
        where = ""
        if path is not None and lineno is not None:
            where = f"{path}:{lineno}: "
        elif lineno is not None:
            where = f"line {lineno}: "
        super().__init__(where + message)
        self.lineno = lineno
        self.path = path


# --------------------------------------------------------------------------- validation


def _validate_op(op: object, where: str) -> dict[str, Any]:
    """Check one op's shape and return it typed as a dict.

    Done once, strictly, at every boundary (recording, loading, checking) so
    the checker's verdict never rests on a silently misread op: a typo such as
    ``"type": "Ok"`` would otherwise turn an acknowledged job into a lost one.
    ``where`` names the op in the error message (its line or index).
    """
    if not isinstance(op, dict):
        raise HistoryError(f"{where}: op must be a JSON object, got {type(op).__name__}")
    op_type = op.get("type")
    if op_type not in OP_TYPES:
        raise HistoryError(f"{where}: 'type' must be one of {sorted(OP_TYPES)}, got {op_type!r}")
    f = op.get("f")
    if not isinstance(f, str):
        raise HistoryError(f"{where}: 'f' must be a string, got {f!r}")
    if not isinstance(op.get("process"), str):
        raise HistoryError(f"{where}: 'process' must be a string, got {op.get('process')!r}")
    t = op.get("time")
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float))):
        raise HistoryError(f"{where}: 'time' must be a number, got {t!r}")
    if f in OP_FUNCTIONS and not isinstance(op.get("id"), str):
        raise HistoryError(f"{where}: {f!r} op needs a string 'id', got {op.get('id')!r}")
    if "count" in op:
        count = op["count"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise HistoryError(f"{where}: 'count' must be a positive integer, got {count!r}")
    if "delivery" in op and not isinstance(op["delivery"], bool):
        raise HistoryError(f"{where}: 'delivery' must be true or false, got {op['delivery']!r}")
    return op


# --------------------------------------------------------------------------- recording


class HistoryRecorder:
    """Append-only, thread-safe recorder of client ops.

    Every op is kept in memory (for an in-process check at the end of a run)
    and, when ``path`` is given, appended to it as one JSON line that is
    flushed immediately: if the client process is killed mid-run, everything
    recorded so far is on disk. The file is opened in append mode so several
    runs or restarted clients can share one history.

    Methods are synchronous, short and never await, so asyncio code calls them
    directly from the event loop; a ``threading.Lock`` makes them safe from
    worker threads too, and guarantees the file order equals ``ops`` order
    and that ``time`` never goes backwards within one recorder.
    """

    def __init__(self, path: Path | str | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        """Open ``path`` for appending (creating parent dirs) if given.

        ``clock`` stamps ops that carry no ``time``; the default is the
        system-wide monotonic clock, which is comparable between processes
        on one host and immune to wall-clock jumps injected by a nemesis.
        """
        self._path = Path(path) if path is not None else None
        self._clock = clock
        self._lock = threading.Lock()
        self._ops: list[dict[str, Any]] = []
        self._closed = False
        self._file: IO[str] | None = None
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self._path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    @property
    def path(self) -> Path | None:
        """Where ops are appended, or ``None`` for an in-memory recorder."""
        return self._path

    @property
    def ops(self) -> list[dict[str, Any]]:
        """A snapshot copy of the ops recorded so far, in record order."""
        with self._lock:
            return [dict(op) for op in self._ops]

    def record(self, op: Mapping[str, Any]) -> dict[str, Any]:
        """Validate, timestamp (if ``time`` is absent) and append one op.

        The op is copied, so later mutation by the caller cannot rewrite
        history, and encoded *before* it is stored, so an unencodable value
        raises ``TypeError`` without leaving a half-recorded op behind.
        Returns the op as stored.
        """
        stored = dict(op)
        with self._lock:
            if self._closed:
                raise RuntimeError("HistoryRecorder is closed")
            if stored.get("time") is None:
                stored["time"] = self._clock()
            _validate_op(stored, f"op #{len(self._ops)}")
            line = _encoder.encode(stored)
            self._ops.append(stored)
            if self._file is not None:
                self._file.write(line.decode("utf-8") + "\n")
                self._file.flush()
        return dict(stored)

    def _op(self, op_type: str, process: str, f: str, id: str, extra: dict[str, Any]) -> dict[str, Any]:
        """Build and record one op; ``extra`` (value, node, error, ...) cannot override the core fields."""
        clash = {"type", "process", "f", "id"} & extra.keys()
        if clash:
            raise TypeError(f"extra fields may not override {sorted(clash)}")
        return self.record({"process": process, "type": op_type, "f": f, "id": id, **extra})

    def invoke(self, process: str, f: str, id: str, **extra: Any) -> dict[str, Any]:
        """Record that ``process`` is about to attempt ``f`` on job ``id``."""
        return self._op("invoke", process, f, id, extra)

    def ok(self, process: str, f: str, id: str, **extra: Any) -> dict[str, Any]:
        """Record that ``f`` on ``id`` definitely happened (e.g. submit acknowledged, result read)."""
        return self._op("ok", process, f, id, extra)

    def fail(self, process: str, f: str, id: str, **extra: Any) -> dict[str, Any]:
        """Record that ``f`` on ``id`` definitely did not happen (e.g. the grid rejected it)."""
        return self._op("fail", process, f, id, extra)

    def info(self, process: str, f: str, id: str, **extra: Any) -> dict[str, Any]:
        """Record that the outcome of ``f`` on ``id`` is unknown (timeout, dropped connection)."""
        return self._op("info", process, f, id, extra)

    def close(self) -> None:
        """Flush and close the file; idempotent. In-memory ``ops`` stay readable."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> HistoryRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --------------------------------------------------------------------------- loading


def load_history(path: Path | str, *, allow_truncated_tail: bool = False) -> list[dict[str, Any]]:
    """Read a JSON-lines history, validating every op.

    Blank lines are skipped. A malformed line raises :class:`HistoryError`
    naming the file and 1-based line number. With ``allow_truncated_tail``,
    an unparseable *final* line lacking its newline is dropped instead: that
    is what a client killed mid-write leaves behind, and it is no evidence
    about the grid.
    """
    p = Path(path)
    data = p.read_bytes()
    lines = data.split(b"\n")
    ops: list[dict[str, Any]] = []
    for index, raw in enumerate(lines):
        lineno = index + 1
        if not raw.strip():
            continue
        try:
            op = _decoder.decode(raw)
        except msgspec.DecodeError as e:
            is_tail = index == len(lines) - 1  # no trailing newline after it
            if allow_truncated_tail and is_tail:
                break
            raise HistoryError(f"malformed JSON: {e}", lineno=lineno, path=p) from e
        try:
            ops.append(_validate_op(op, "op"))
        except HistoryError as e:
            raise HistoryError(str(e), lineno=lineno, path=p) from e
    return ops


# --------------------------------------------------------------------------- checking


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


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m harness.history FILE``: print the verdict JSON, the summary on stderr.

    Exit status 0 = valid, 1 = invalid, 2 = usage error or malformed history,
    so a chaos-test script can gate on it directly.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0] in {"-h", "--help"}:
        print("usage: python -m harness.history HISTORY.jsonl", file=sys.stderr)
        return 2
    try:
        result = check(load_history(args[0], allow_truncated_tail=True))
    except (HistoryError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(result.to_dict()), indent=2).decode() + "\n")
    print(summary_line(result), file=sys.stderr)
    return 0 if result.valid else 1


if __name__ == "__main__":
    raise SystemExit(main())
