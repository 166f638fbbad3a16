"""What every part of one server shares: settings, store, peers, metrics, the ring view, its identity,
its background tasks, its event journal and the signals the parts wake each other with.

The parts (ring keeper, replication, search, job service, runner) each get this and their declared
collaborators; none reaches into another's state.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
import uuid
from collections import deque
from collections.abc import Coroutine
from typing import Any

import msgspec
import structlog

from ..logs import bind_cause
from ..membership import Membership
from ..protocol import Member, RingState
from ..settings import NodeSettings
from .metrics import Metrics
from .peers import Peers
from .store import Store


_DEPARTED_KEPT = 512
_departed_enc = msgspec.msgpack.Encoder()
_departed_dec = msgspec.msgpack.Decoder(list[Member])


class Identity:
    """The node's id: a base id kept in its store, plus an incarnation counted up each time it rejoins
    after being removed (so the rows of its former self count as orphans to reconcile)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        raw = store.get_meta("node_id")
        if raw:
            self.base = raw.decode()
        else:
            self.base = uuid.uuid4().hex[:10]
            store.set_meta("node_id", self.base.encode())
        self.incarnation = int((store.get_meta("incarnation") or b"0").decode())

    @property
    def id(self) -> str:
        return self.base if self.incarnation == 0 else f"{self.base}-{self.incarnation}"

    def next_incarnation(self) -> str:
        self.incarnation += 1
        self.store.set_meta("incarnation", str(self.incarnation).encode())
        return self.id

    def is_former_self(self, node_id: str) -> bool:
        return node_id == self.base or node_id.startswith(self.base + "-")


class Signals:
    """Events the parts set to wake each other (never cleared by the setter)."""

    def __init__(self) -> None:
        self.wake_runner = asyncio.Event()  # work appeared: the runner leases or steals
        self.beat_now = asyncio.Event()     # jobs wait here now: heartbeat at once so idle thieves learn it
        self.resync = asyncio.Event()       # the ring changed: bring every job of ours back to R copies


class NodeContext:
    def __init__(self, settings: NodeSettings, peers: Peers, metrics: Metrics, store: Store) -> None:
        self.s = settings
        self.t = settings.timing
        self.peers = peers
        self.metrics = metrics
        self.store = store
        self.identity = Identity(store)
        self.log = structlog.get_logger("jobgrid.node").bind(node=self.identity.id)
        self.mem = Membership(me=self.identity.id, ring=RingState(epoch=0, members=[]),
                              replicas=settings.replicas or 3, failure_timeout=self.t.failure_timeout,
                              fence_window=max(self.t.heartbeat_interval * 2, self.t.failure_timeout * 0.6),
                              started=time.monotonic())
        # members removed from the ring, by id (where their copies go: handoffs, reports, orphans); kept in the
        # store, so a node restarted after a removal still knows whose position its orphan rows belong to
        raw = store.get_meta("departed")
        self.departed: dict[str, Member] = {m.id: m for m in _departed_dec.decode(raw)} if raw else {}
        self.signals = Signals()
        self.joined = asyncio.Event()
        self.stopping = False
        self.leaving = False  # a graceful leave began: no new work taken here (node/leaving.py)
        self.events: deque[dict] = deque(maxlen=500)
        self.promotions: list[dict] = []
        self.tasks: set[asyncio.Task] = set()
        peers.identity = lambda: self.id

    @property
    def id(self) -> str:
        return self.identity.id

    def note_departed(self, members: list[Member]) -> None:
        for m in members:
            self.departed.pop(m.id, None)
            self.departed[m.id] = m
        keep = list(self.departed.values())[-_DEPARTED_KEPT:]
        self.departed = {m.id: m for m in keep}
        self.store.set_meta("departed", _departed_enc.encode(keep))

    def new_incarnation(self) -> None:
        """Rejoining after removal: a new id, so the old rows count as orphans to reconcile."""
        self.mem.me = self.identity.next_incarnation()
        self.log = self.log.bind(node=self.id)

    def me_member(self, location: int) -> Member:
        return Member(id=self.id, location=location, ip=self.s.advertised_host, port=self.s.port)

    def event(self, kind: str, **kw: Any) -> None:
        """A node-level event: kept for /state and the dashboard, and logged."""
        kw.update(kind=kind, at=time.time())
        self.events.append(kw)
        self.log.info(kind, **{k: v for k, v in kw.items() if k not in ("kind", "at")})

    def promoted(self, dead: str, jobs: int, **kw: Any) -> None:
        """Record a promotion of a departed owner's copies here (the harness's verdict names them)."""
        self.promotions.append({"dead": dead, "by": self.id, "jobs": jobs, "at": time.time(), **kw})

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
        """A background task with a causal id of its own; its failure is logged, never lost."""
        ctx = contextvars.copy_context()
        ctx.run(bind_cause, None, name.split("-", 1)[0][:8] + "-")
        task = asyncio.get_running_loop().create_task(coro, name=name, context=ctx)
        self.tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("task_failed", task=task.get_name(), error=repr(task.exception()))

    async def close(self) -> None:
        self.stopping = True
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
