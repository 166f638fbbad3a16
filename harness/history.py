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

The checker (:func:`check`, in harness/checker.py) is Jepsen's ``total-queue`` with one change:
duplicates fail the run, because a job grid promises each accepted job runs
to one recorded result, not "at least once".
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
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
    from .checker import check, summary_line  # noqa: PLC0415
    try:
        result = check(load_history(args[0], allow_truncated_tail=True))
    except (HistoryError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(result.to_dict()), indent=2).decode() + "\n")
    print(summary_line(result), file=sys.stderr)
    return 0 if result.valid else 1


def __getattr__(name: str) -> Any:
    """`from harness.history import check` (and CheckResult, summary_line) keeps working: the checker lives in
    harness/checker.py, imported on first use so that it can import this module."""
    if name in ("check", "CheckResult", "summary_line"):
        from . import checker  # noqa: PLC0415
        return getattr(checker, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    raise SystemExit(main())
