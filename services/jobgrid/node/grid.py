"""The server half of a node: ring membership, queues, replication, promotion (jobs.py: a job's life).

Decisions come from the pure `Membership`; this class performs the IO they imply.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Sequence

import msgspec
import structlog

from .. import ring as ringmath
from ..errors import GridUnavailable, ProtocolError, Unavailable
from ..logs import bind_cause
from ..membership import AddLock, Membership, RingChange, join_backoff
from ..protocol import (
    HandoffRequest, Heartbeat, HeartbeatReply, JobRecord, JobSpec, JoinAnnounce, LockRequest, LockResponse,
    LookupRequest, LookupResponse, Member, ReplicateRequest, ReportResponse, Result, RingState, ServerEntry,
    ServerList, UnlockRequest,
)
from ..settings import NodeSettings
from .batching import GroupCommit
from .jobs import JobFlow, LocalRunner
from .metrics import Metrics
from .peers import PeerError, Peers
from .restart import Restart
from .search import Search
from .store import Store

_ring_enc = msgspec.msgpack.Encoder()
_ring_dec = msgspec.msgpack.Decoder(RingState)


class Grid(JobFlow, Search, Restart):
    """One server: its store, its view of the ring, and the protocol with its peers (and, from
    `JobFlow`, what happens to the jobs it owns)."""

    def __init__(self, settings: NodeSettings, peers: Peers, metrics: Metrics | None = None) -> None:
        self.s = settings
        self.t = settings.timing
        self.peers = peers
        self.metrics = metrics or Metrics()
        assert settings.data_dir is not None
        self.store = Store(settings.data_dir / "jobgrid.sqlite3")
        self.base_id = self._load_or_make_id()
        self.incarnation = int((self.store.get_meta("incarnation") or b"0").decode())
        self.id = self._incarnated_id()
        self.log = structlog.get_logger("jobgrid.node").bind(node=self.id)
        saved = self.store.get_meta("ring")
        self.saved_ring = _ring_dec.decode(saved) if saved else None
        now = time.monotonic()
        self.mem = Membership(me=self.id, ring=RingState(epoch=0, members=[]), replicas=settings.replicas,
                              failure_timeout=self.t.failure_timeout,
                              fence_window=max(self.t.heartbeat_interval * 2, self.t.failure_timeout * 0.6),
                              started=now)
        self.add_lock = AddLock()
        self.departed: dict[str, Member] = {}
        self.promotions: list[dict] = []
        self.events: deque[dict] = deque(maxlen=500)
        self.waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self.local_runner: LocalRunner | None = None  # set by the node's Runner
        # results recorded here whose copies are still being written: not shown to clients until they are
        self.unreplicated: set[str] = set()
        self.wake_runner = asyncio.Event()
        self.beat_now = asyncio.Event()  # send the next heartbeats at once (work appeared: tell the thieves)
        self.submits: GroupCommit[JobSpec, tuple[list[str], list[str]]] = GroupCommit(self._flush_submits)
        self.reports: GroupCommit[Result, ReportResponse] = GroupCommit(self._flush_reports)
        self.tasks: set[asyncio.Task] = set()
        self.stopping = False
        self.joined = asyncio.Event()
        self._counts = self.store.counts(self.id)
        self._counts_at = 0.0
        self._resync_needed = asyncio.Event()
        self.duplicates_dropped = 0
        self._beats: dict[str, asyncio.Task] = {}
        self.done_times: deque[float] = deque(maxlen=100_000)

    # ---- identity ----------------------------------------------------------------------------------
    def _load_or_make_id(self) -> str:
        raw = self.store.get_meta("node_id")
        if raw:
            return raw.decode()
        nid = uuid.uuid4().hex[:10]
        self.store.set_meta("node_id", nid.encode())
        return nid

    def _incarnated_id(self) -> str:
        return self.base_id if self.incarnation == 0 else f"{self.base_id}-{self.incarnation}"

    def _new_incarnation(self) -> None:
        """Rejoining after removal: a new id, so our old rows count as orphans to reconcile."""
        self.incarnation += 1
        self.store.set_meta("incarnation", str(self.incarnation).encode())
        self.id = self._incarnated_id()
        self.mem.me = self.id
        self.log = self.log.bind(node=self.id)

    def me_member(self, location: int) -> Member:
        return Member(id=self.id, location=location, ip=self.s.advertised_host, port=self.s.port)

    def event(self, kind: str, **kw) -> None:
        kw.update(kind=kind, at=time.time())
        self.events.append(kw)
        self.log.info(kind, **{k: v for k, v in kw.items() if k not in ("kind", "at")})

    def spawn(self, coro, name: str) -> asyncio.Task:
        ctx = contextvars.copy_context()  # a background task is its own stimulus: a cause of its own
        ctx.run(bind_cause, None, name.split("-", 1)[0][:8] + "-")
        task = asyncio.get_running_loop().create_task(coro, name=name, context=ctx)
        self.tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("task_failed", task=task.get_name(), error=repr(task.exception()))

    # ---- state views -------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        now = time.monotonic()
        if now - self._counts_at > 0.1:
            self._counts = self.store.counts(self.id)
            self._counts_at = now
            self.metrics.active.set(self._counts["active"])
            self.metrics.backup.set(self._counts["backup"])
        return self._counts

    def can_serve(self) -> bool:
        return not self.stopping and self.mem.is_member and self.mem.has_quorum(time.monotonic())

    def require_serving(self) -> None:
        if self.stopping:
            raise Unavailable("node is stopping")
        if self.recovering is not None:
            raise Unavailable(self.not_serving_reason() or "restarting", retry_after=2.0)
        if not self.mem.is_member:
            raise Unavailable("node is not (yet) a member of the ring")
        if not self.mem.has_quorum(time.monotonic()):
            raise Unavailable("node cannot reach a majority of the ring (partitioned?); try another node")

    def server_list(self) -> ServerList:
        now = time.monotonic()
        wall = time.time()
        out = []
        c = self.counts()
        waiting = self.recovering
        if waiting is not None:  # restarting after an outage: the ring it waits for, who is back and who not
            out = [ServerEntry(id=m.id, location=m.location, ip=m.ip, port=m.port,
                               status="alive" if m.id in waiting.back else "dead") for m in waiting.ring.members]
            return ServerList(epoch=waiting.ring.epoch, me=self.id, servers=out, serving=False,
                              reason=self.not_serving_reason() or "")
        for m in self.mem.members:
            if m.id == self.id:
                out.append(ServerEntry(id=m.id, location=m.location, ip=m.ip, port=m.port, active=c["queued"],
                                       backup=c["backup"], timestamp=wall, status="alive"))
            else:
                heard = max(self.mem.heard.get(m.id, 0.0), self.mem.contact.get(m.id, 0.0))
                ts = wall - (now - heard) if heard else 0.0
                out.append(ServerEntry(id=m.id, location=m.location, ip=m.ip, port=m.port,
                                       active=self.mem.active.get(m.id, 0), backup=self.mem.backup.get(m.id, 0),
                                       timestamp=ts, status=self.mem.status(m.id, now)))  # type: ignore[arg-type]
        reason = self.not_serving_reason()
        return ServerList(epoch=self.mem.ring.epoch, me=self.id, servers=out, serving=reason is None,
                          reason=reason or "")

    # ---- ring changes --------------------------------------------------------------------------------
    def apply_ring(self, new: RingState) -> RingChange | None:
        if new.key() > self.mem.ring.key():
            problem = self.mem.ring_problem(new, (self.s.advertised_host, self.s.port))
            if problem is not None:  # never adopted, never persisted: a ring we could not restart from
                self.log.warning("ring_refused", epoch=new.epoch, proposer=new.proposer, reason=problem)
                return None
        change = self.mem.adopt(new, time.monotonic())
        if change is None:
            return None
        self.store.set_meta("ring", _ring_enc.encode(new))
        self.metrics.ring_size.set(len(new.members))
        self.metrics.epoch.set(new.epoch)
        self.event("ring_changed", epoch=new.epoch, members=len(new.members),
                   added=[m.id for m in change.added], removed=[m.id for m in change.removed])
        for m in change.removed:
            self.departed[m.id] = m
        if not change.i_am_member:
            if self.joined.is_set() and not self.stopping:
                self.event("removed_from_ring", epoch=new.epoch)
                self.joined.clear()
                self.spawn(self.rejoin(), "rejoin")
            return change
        gone = [m.id for m in change.removed]
        if gone:
            back = self.store.expire_leases(self.id, time.time(), holders=gone)
            if back:
                self.metrics.lease_expired.inc(len(back))
                self._log_jobs("job_lease_expired", back, holders=gone)
        for m in change.promote:
            n = self.store.adopt(m.id, self.id)
            self.metrics.promoted.inc(n)
            self.promotions.append({"dead": m.id, "by": self.id, "jobs": n, "epoch": new.epoch, "at": time.time()})
            self.event("replicas_promoted", dead=m.id, jobs=n, epoch=new.epoch)
        for m, p in change.handoff:
            self.spawn(self._handoff(m, p), f"handoff-{m.id}")
        if change.successors_changed or change.promote or change.removed:
            self._resync_needed.set()
        self.wake_runner.set()
        return change

    async def broadcast_ring(self, ring: RingState, extra: Sequence[Member] = ()) -> None:
        targets = {m.id: m for m in [*ring.members, *extra] if m.id != self.id}
        await asyncio.gather(*(self._send_ring(m, ring) for m in targets.values()))

    async def _send_ring(self, m: Member, ring: RingState) -> None:
        try:
            await self.peers.call(m.ip, m.port, "/peer/ring", JoinAnnounce(ring=ring, sender=self.id), RingState,
                                  timeout=self.t.failure_timeout)
        except (PeerError, ProtocolError):
            pass

    # ---- start, join, rejoin ------------------------------------------------------------------------
    async def start_membership(self) -> None:
        """First node of a new grid, a node joining one, or a node coming back on its data dir."""
        contacts: list[tuple[str, int]] = []
        if self.s.join:
            contacts.append(self.s.join)
        if self.saved_ring:
            contacts += [(m.ip, m.port) for m in self.saved_ring.members if m.id != self.id]
        if not contacts:
            loc = self.saved_ring.members[0].location if self.saved_ring and self.saved_ring.members else 0
            epoch = self.saved_ring.epoch + 1 if self.saved_ring else 1
            self.apply_ring(RingState(epoch=epoch, members=[self.me_member(loc)], proposer=self.id))
            self.store.requeue_all_leased(self.id)
            self.joined.set()
            self.event("grid_started", location=loc)
            return
        if self.saved_ring is not None and self.saved_ring.members:
            # restarted on its data dir: a live grid takes it back; after an outage of the whole grid, it
            # waits for a majority of the ring it knew (restart.py), however long that takes
            ring = await self.recover(contacts)
            if ring is None:
                return
        else:
            ring = await self._fetch_ring_any(contacts)
        if ring is None:  # a new node whose contact does not answer (yet): keep trying until join_timeout
            self.event("join_waiting", contacts=[f"{h}:{p}" for h, p in contacts])
            await self.join(contacts)
            return
        mine = next((m for m in ring.members if m.id == self.id), None)
        if mine is not None and mine.ip == self.s.advertised_host and mine.port == self.s.port:
            self.apply_ring(ring)
            back = self.store.requeue_all_leased(self.id)
            self.joined.set()
            self.event("resumed_membership", location=mine.location, requeued=back)
            self._resync_needed.set()
            return
        if self.saved_ring is not None and any(m.id == self.id for m in self.saved_ring.members):
            self._new_incarnation()  # we were removed while away: our old rows are orphans now
        await self.join(contacts)

    async def _fetch_ring_any(self, contacts: Sequence[tuple[str, int]]) -> RingState | None:
        best: RingState | None = None
        for host, port in contacts:
            try:
                r = await self.peers.call(host, port, "/peer/ring", None, RingState, method="GET", timeout=2.0)
            except (PeerError, ProtocolError):
                continue
            if best is None or r.key() > best.key():
                best = r
            if self.s.join and (host, port) == self.s.join:
                break
        return best

    async def join(self, contacts: Sequence[tuple[str, int]]) -> None:
        """The seed's join: every server's add_lock, middle of the largest gap, announce, release."""
        deadline = time.monotonic() + self.t.join_timeout
        attempt = 0
        while not self.stopping:
            if time.monotonic() > deadline:
                raise GridUnavailable(f"could not join the grid within {self.t.join_timeout:.0f} s: no server "
                                      f"answered at {', '.join(f'{h}:{p}' for h, p in contacts)}")
            ring = await self._fetch_ring_any(contacts)
            if ring is None or not ring.members:
                await asyncio.sleep(join_backoff(attempt, random.random()))
                attempt += 1
                continue
            ok, locked, best = await self._lock_all(ring)
            if (ok and best is not None and {m.id for m in best.members} == {m.id for m in locked}
                    and self.mem.ring_problem(best) is None):
                loc = ringmath.largest_gap_midpoint([m.location for m in best.members])
                me = self.me_member(loc)
                new = RingState(epoch=best.epoch + 1, members=[*best.members, me], proposer=self.id)
                self.mem.ring = best
                self.apply_ring(new)
                await self.broadcast_ring(new)
                await self._unlock(locked)
                self.joined.set()
                self.event("joined", location=loc, epoch=new.epoch, attempts=attempt + 1)
                self._resync_needed.set()
                return
            await self._unlock(locked)
            attempt += 1
            self.event("join_backoff", attempt=attempt)
            await asyncio.sleep(join_backoff(attempt, random.random()))

    async def _lock_all(self, ring: RingState) -> tuple[bool, list[Member], RingState | None]:
        req = LockRequest(holder=self.id, ttl=self.t.lock_ttl)

        async def one(m: Member) -> LockResponse | None:
            try:
                return await self.peers.call(m.ip, m.port, "/peer/lock", req, LockResponse, timeout=2.0)
            except (PeerError, ProtocolError):
                return None

        answers = await asyncio.gather(*(one(m) for m in ring.members))
        locked = [m for m, a in zip(ring.members, answers) if a is not None and a.granted]
        rings = [a.ring for a in answers if a is not None]
        best = max(rings, key=lambda r: r.key()) if rings else None
        return len(locked) == len(ring.members), locked, best

    async def _unlock(self, members: Sequence[Member]) -> None:
        async def one(m: Member) -> None:
            try:
                await self.peers.call(m.ip, m.port, "/peer/unlock", UnlockRequest(holder=self.id), LockResponse,
                                      timeout=2.0)
            except (PeerError, ProtocolError):
                pass

        await asyncio.gather(*(one(m) for m in members))

    async def rejoin(self) -> None:
        """Removed while alive (paused, cut off, too slow): come back as a new incarnation."""
        contacts = [(m.ip, m.port) for m in self.mem.ring.members if m.id != self.id]
        if self.s.join:
            contacts.append(self.s.join)
        self._new_incarnation()
        while not self.stopping:
            try:
                await self.join(contacts)
                return
            except GridUnavailable as e:
                self.log.warning("rejoin_failed", error=str(e))
                await asyncio.sleep(1.0)

    # ---- heartbeats and failure detection -------------------------------------------------------------
    async def heartbeat_loop(self) -> None:
        while not self.stopping:
            start = time.monotonic()
            if self.joined.is_set():
                # one beat in flight per peer; a silent peer (paused, cut off) must not hold up the others'
                # replies, or their contact ages past the fence window and a healthy majority loses quorum
                beats = []
                for m in self.mem.peers():
                    t = self._beats.get(m.id)
                    if t is None or t.done():
                        t = self._beats[m.id] = self.spawn(self._beat(m), f"beat-{m.id}")
                    beats.append(t)
                if beats:
                    await asyncio.wait(beats, timeout=self.t.heartbeat_interval)
                self._beats = {k: v for k, v in self._beats.items() if not v.done()}
                proposal = self.mem.propose_removals(time.monotonic())
                if proposal is not None:
                    dead = [m for m in self.mem.ring.members if m not in proposal.members]
                    self.event("declared_dead", dead=[m.id for m in dead], epoch=proposal.epoch)
                    self.apply_ring(proposal)
                    self.spawn(self.broadcast_ring(proposal, extra=dead), "broadcast")
            try:
                await asyncio.wait_for(self.beat_now.wait(),
                                       timeout=max(0.0, self.t.heartbeat_interval - (time.monotonic() - start)))
            except TimeoutError:
                pass
            self.beat_now.clear()

    async def _beat(self, m: Member) -> None:
        c = self.counts()
        sent = time.monotonic()
        hb = Heartbeat(sender=self.id, epoch=self.mem.ring.epoch, active=c["queued"], backup=c["backup"],
                       sent_at=time.time())
        try:
            reply = await self.peers.call(m.ip, m.port, "/peer/heartbeat", hb, HeartbeatReply,
                                          timeout=self.t.failure_timeout)
        except (PeerError, ProtocolError):
            return
        self.metrics.heartbeat_rtt.observe(time.monotonic() - sent)
        if reply.ring is not None and reply.ring.key() > self.mem.ring.key():
            self.apply_ring(reply.ring)
        if reply.member and reply.epoch == self.mem.ring.epoch:
            self.mem.on_reply(m.id, sent, reply.active)
        elif reply.epoch < self.mem.ring.epoch:
            self.spawn(self._send_ring(m, self.mem.ring), "push-ring")

    def on_heartbeat(self, hb: Heartbeat) -> HeartbeatReply:
        self.poke_recovery(hb.sender)
        member = self.mem.member(hb.sender) is not None
        if member:
            if hb.active and not self.mem.active.get(hb.sender):
                self.wake_runner.set()  # the sender has queued jobs again: our idle runner may steal them
            self.mem.on_heartbeat(hb.sender, time.monotonic(), hb.active, hb.backup)
        ring = self.mem.ring if (not member or hb.epoch < self.mem.ring.epoch) else None
        return HeartbeatReply(epoch=self.mem.ring.epoch, active=self.counts()["queued"], member=member, ring=ring)

    def on_ring(self, ann: JoinAnnounce) -> RingState:
        """A ring announced by a joiner or the leader: adopt it if it is newer."""
        if ann.ring.key() > self.mem.ring.key():
            why = self.mem.ring_problem(ann.ring, (self.s.advertised_host, self.s.port))
            if why is not None:
                raise ProtocolError(f"ring refused: {why}", 422)
            if ann.sender == self.id:
                raise ProtocolError("ring refused: announced in this node's own name", 403)
            why = self.mem.push_problem(ann.ring, ann.sender, self.add_lock.current(time.monotonic()))
            if why is not None:
                raise ProtocolError(f"ring refused: {why}", 409)
            self.apply_ring(ann.ring)
        return self.mem.ring

    def on_lock(self, req: LockRequest) -> LockResponse:
        granted = self.add_lock.acquire(req.holder, time.monotonic(), req.ttl)
        return LockResponse(granted=granted, holder=self.add_lock.current(time.monotonic()), ring=self.mem.ring)

    def on_unlock(self, req: UnlockRequest) -> LockResponse:
        self.add_lock.release(req.holder)
        return LockResponse(granted=False, holder=self.add_lock.current(time.monotonic()), ring=self.mem.ring)

    # ---- replication -------------------------------------------------------------------------------
    async def replicate(self, make: ReplicateRequest, deadline: float | None = None) -> None:
        """Send `make` to every current successor; retry (following ring changes) until all have it.

        A successor that stops answering (killed, frozen, cut off) is not waited for past the ring change
        that removes it: its copy is then due on the new successor instead, so a fault delays submissions
        by about the failure timeout, not by the peer call's own timeout."""
        done: set[str] = set()
        end = time.monotonic() + (deadline if deadline is not None else 2 * self.t.failure_timeout + 2)
        sending: dict[str, asyncio.Task] = {}
        retry_at: dict[str, float] = {}
        try:
            while True:
                targets = {m.id: m for m in self.mem.successors(self.id) if m.id not in done}
                if not targets:
                    return
                for mid in [k for k in sending if k not in targets]:  # no longer a successor: not needed
                    sending.pop(mid).cancel()
                now = time.monotonic()
                for mid, m in targets.items():
                    if mid not in sending and retry_at.get(mid, 0.0) <= now:
                        sending[mid] = asyncio.ensure_future(self._replicate_one(m, make))
                if now > end or self.stopping:
                    raise Unavailable("could not copy the jobs to enough replicas in time; outcome unknown")
                if sending:  # wake on an answer, or soon enough to see a ring change
                    finished, _ = await asyncio.wait(sending.values(), timeout=0.1,
                                                     return_when=asyncio.FIRST_COMPLETED)
                else:
                    finished = set()
                    await asyncio.sleep(0.05)
                for mid, t in list(sending.items()):
                    if t in finished:
                        del sending[mid]
                        if t.result():
                            done.add(mid)
                        else:
                            retry_at[mid] = time.monotonic() + 0.05
        finally:
            for t in sending.values():
                t.cancel()

    async def _replicate_one(self, m: Member, req: ReplicateRequest) -> bool:
        req = msgspec.structs.replace(req, epoch=self.mem.ring.epoch)
        try:
            await self.peers.call(m.ip, m.port, "/peer/replicate", req, ReportResponse,
                                  timeout=max(5.0, self.t.failure_timeout))
            return True
        except PeerError as e:
            if e.status == 409:
                try:
                    ring = msgspec.msgpack.decode(e.body, type=RingState)
                    self.apply_ring(ring)
                except Exception:  # noqa: BLE001 - an error body without a ring
                    pass
            return False
        except ProtocolError:
            return False

    def on_replicate(self, req: ReplicateRequest) -> ReportResponse:
        if req.sender == self.id:
            raise ProtocolError("replicas in this node's own name refused: a node never replicates to itself", 403)
        stray = next((j for j in req.jobs if j.owner != req.sender), None)
        if stray is not None:
            raise ProtocolError(f"node {req.sender} sent a replica of job {stray.spec.id}, owned by {stray.owner}", 403)
        sender = self.mem.member(req.sender)
        if sender is None and req.sender not in self.departed:
            if req.epoch > self.mem.ring.epoch:
                pass  # we are behind: accept, the ring will follow through heartbeats
            else:
                raise ProtocolError(f"sender {req.sender} is not a member of ring epoch {self.mem.ring.epoch}", 409)
        if req.prune_all:
            # only a member may prune its copies, and only with our ring (not an older one) agreeing that we are
            # not its successor: a departed owner's rows are promoted or handed off, never dropped on its word
            if (sender is None or req.epoch < self.mem.ring.epoch
                    or any(m.id == self.id for m in self.mem.successors(req.sender))):
                self.event("prune_refused", owner=req.sender, epoch=req.epoch)
                return ReportResponse(recorded=[], duplicates=[], unknown=[])
            n = self.store.drop_owner(req.sender)
            self.event("replicas_pruned", owner=req.sender, jobs=n)
            return ReportResponse(recorded=[], duplicates=[], unknown=[])
        if (sender is not None and req.epoch <= self.mem.ring.epoch
                and all(m.id != self.id for m in self.mem.successors(req.sender))):
            # the ring makes this node responsible for none of the sender's copies (the answer carries our ring)
            raise ProtocolError(f"this node is not a successor of {req.sender} in ring epoch {self.mem.ring.epoch}",
                                409)
        if req.jobs:
            self.store.upsert_replicas(req.jobs)
        if req.results or req.drop:
            self.store.put_result_replicas(req.sender, req.results, req.drop)
            self._notify([r.job_id for r in req.results])
        return ReportResponse(recorded=[], duplicates=[], unknown=[])

    async def resync_loop(self) -> None:
        """After a membership change, bring every job and result of ours back to R copies."""
        while not self.stopping:
            await self._resync_needed.wait()
            self._resync_needed.clear()
            if not self.joined.is_set():
                continue
            await asyncio.sleep(0.05)  # let a burst of ring changes settle
            try:
                await self._resync()
                await self._reconcile_orphans()
            except (GridUnavailable, ProtocolError) as e:
                self.log.warning("resync_incomplete", error=str(e))
                await asyncio.sleep(0.5)
                self._resync_needed.set()

    async def _resync(self) -> None:
        epoch = self.mem.ring.epoch
        after = ""
        while True:
            jobs = self.store.jobs_of(self.id, after=after, limit=2000)
            if not jobs:
                break
            after = jobs[-1].spec.id
            await self.replicate(ReplicateRequest(sender=self.id, epoch=0, jobs=jobs))
        after = ""
        while True:
            res = self.store.results_of(self.id, after=after, limit=2000)
            if not res:
                break
            after = res[-1].job_id
            await self.replicate(ReplicateRequest(sender=self.id, epoch=0, results=res))
        # prune only with the ring the copies above were made for: a prune computed from an older ring would
        # wipe the copies on successors gained meanwhile (the ring change sets _resync_needed: we run again)
        if self.mem.ring.epoch != epoch or not self.mem.is_member or self._resync_needed.is_set():
            return
        keep = {m.id for m in self.mem.successors(self.id)} | {self.id}
        prune = ReplicateRequest(sender=self.id, epoch=self.mem.ring.epoch, prune_all=True)
        others = [m for m in self.mem.peers() if m.id not in keep]
        await asyncio.gather(*(self._replicate_one(m, prune) for m in others))

    async def _handoff(self, dead: Member, promoter: Member) -> None:
        """We hold replicas of a departed owner that someone else now covers: send them there."""
        for _ in range(20):
            try:
                while True:
                    jobs = self.store.jobs_of(dead.id, limit=2000)
                    res = self.store.results_of(dead.id, limit=2000)
                    if not jobs and not res:
                        return
                    await self.peers.call(promoter.ip, promoter.port, "/peer/handoff",
                                          HandoffRequest(sender=self.id, epoch=self.mem.ring.epoch, dead=dead.id,
                                                         jobs=jobs, results=res), ReportResponse, timeout=10.0)
                    self.store.drop_owner(dead.id, [j.spec.id for j in jobs] + [r.job_id for r in res])
            except (PeerError, ProtocolError) as e:
                self.log.warning("handoff_retry", dead=dead.id, to=promoter.id, error=str(e))
                await asyncio.sleep(0.5)
                p = self.mem.promoter_for(dead.location)
                if p is None:
                    return
                if p.id == self.id:
                    self.store.adopt(dead.id, self.id)
                    self._resync_needed.set()
                    return
                promoter = p

    def on_handoff(self, req: HandoffRequest) -> ReportResponse:
        if self.id in (req.sender, req.dead):
            raise ProtocolError("a handoff from or of this node itself refused", 403)
        stray = next((j for j in req.jobs if j.owner != req.dead), None)
        if stray is not None:
            raise ProtocolError(f"handoff of job {stray.spec.id}, owned by {stray.owner}, not by {req.dead}", 403)
        if self.mem.member(req.dead) is not None and req.epoch <= self.mem.ring.epoch:
            raise ProtocolError(f"node {req.dead} is a member of ring epoch {self.mem.ring.epoch}: nothing to hand off",
                                409)
        fresh = [msgspec.structs.replace(j, owner=self.id, state="queued") for j in req.jobs]
        got = self.store.put_jobs(fresh)
        n = len(got) + self.store.adopt(req.dead, self.id, [j.spec.id for j in req.jobs])
        if req.results:
            have = self.store.get_results([r.job_id for r in req.results])
            self.store.put_result_replicas(self.id, [r for r in req.results if r.job_id not in have], [])
        if n:
            self.metrics.promoted.inc(n)
            self.promotions.append({"dead": req.dead, "by": self.id, "jobs": n, "epoch": req.epoch,
                                    "at": time.time(), "via": req.sender})
            self.event("replicas_promoted", dead=req.dead, jobs=n, via=req.sender)
        self._resync_needed.set()
        self.wake_runner.set()
        return ReportResponse(recorded=got, duplicates=[], unknown=[])

    async def _reconcile_orphans(self) -> None:
        """Rows owned by nobody in the ring: drop what the grid has, adopt what only we hold."""
        members = {m.id for m in self.mem.ring.members}
        for owner in self.store.owners():
            if owner in members or owner == self.id:
                continue
            dead = self.departed.get(owner)
            if owner == self.base_id or owner.startswith(self.base_id + "-"):
                dead = None  # our own former incarnation: others promoted its jobs; adopt only what nobody has
            if dead is not None:
                p = self.mem.promoter_for(dead.location)
                if p is not None and p.id == self.id:
                    n = self.store.adopt(owner, self.id)
                    if n:
                        self.metrics.promoted.inc(n)
                        self.promotions.append({"dead": owner, "by": self.id, "jobs": n,
                                                "epoch": self.mem.ring.epoch, "at": time.time()})
                    continue
                if p is not None:
                    await self._handoff(dead, p)
                    continue
            await self._adopt_unknown_orphans(owner)

    async def _adopt_unknown_orphans(self, owner: str) -> None:
        while True:
            jobs = self.store.jobs_of(owner, limit=1000)
            res = self.store.results_of(owner, limit=1000)
            if not jobs and not res:
                return
            ids = [j.spec.id for j in jobs] + [r.job_id for r in res]
            found = await self.lookup_everywhere(ids)
            mine_results = {r.job_id: r for r in res}
            adopt: list[str] = []
            for i in ids:
                there = found.get(i)
                if there is None:
                    adopt.append(i)
                elif isinstance(there, JobRecord) and i in mine_results:
                    # the grid still has it queued, we hold a finished run of it: report that result
                    await self._report_to(there.owner, [mine_results[i]])
            if adopt:
                self.store.adopt(owner, self.id, adopt)
                for r in res:
                    if r.job_id in adopt:
                        self.store.db.execute("UPDATE results SET owner=? WHERE job_id=?", (self.id, r.job_id))
                self.event("orphans_adopted", owner=owner, jobs=len(adopt))
            self.store.drop_owner(owner, [i for i in ids if i not in adopt])
            if adopt:
                self._resync_needed.set()

    async def lookup_everywhere(self, ids: list[str]) -> dict[str, Result | JobRecord]:
        """Results (preferred) or jobs that any other member holds for `ids`."""
        out: dict[str, Result | JobRecord] = {}

        async def one(m: Member) -> LookupResponse | None:
            try:
                return await self.peers.call(m.ip, m.port, "/peer/lookup", LookupRequest(ids=ids), LookupResponse,
                                             timeout=3.0)
            except (PeerError, ProtocolError):
                return None

        answers = await asyncio.gather(*(one(m) for m in self.mem.peers()))
        if any(a is None for a in answers):
            raise GridUnavailable("some servers did not answer a lookup; will retry")
        for a in answers:
            for j in a.jobs:
                out.setdefault(j.spec.id, j)
            for r in a.results:
                out[r.job_id] = r
        return out

    def on_lookup(self, req: LookupRequest) -> LookupResponse:
        results = self.store.get_results(req.ids)
        jobs = [rec for i, (rec, _) in self.store.get_jobs(req.ids).items() if i not in results]
        return LookupResponse(results=list(results.values()), jobs=jobs)

    # ---- stopping ----------------------------------------------------------------------------------------------
    async def close(self) -> None:
        self.stopping = True
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for evs in self.waiters.values():
            for ev in evs:
                ev.set()
        self.store.close()
