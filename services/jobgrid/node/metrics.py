"""Prometheus metrics of one node, in a registry of its own (several nodes may share a process in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.submitted = Counter("jobgrid_jobs_submitted", "Jobs accepted into this node's activeQueue", registry=r)
        self.started = Counter("jobgrid_jobs_started", "Jobs started by this node's runners", registry=r)
        self.succeeded = Counter("jobgrid_jobs_succeeded", "Results recorded as succeeded by this owner", registry=r)
        self.failed = Counter("jobgrid_jobs_failed", "Results recorded as failed by this owner", registry=r)
        self.cancelled = Counter("jobgrid_jobs_cancelled", "Jobs cancelled", registry=r)
        self.retried = Counter("jobgrid_jobs_retried", "Jobs put back in the queue to run again", registry=r)
        self.stolen = Counter("jobgrid_jobs_stolen", "Jobs this node's runners took from other servers", registry=r)
        self.promoted = Counter("jobgrid_jobs_promoted", "Replicas promoted to this node's activeQueue", registry=r)
        self.duplicates = Counter("jobgrid_duplicate_results_dropped", "Results dropped: the job had one", registry=r)
        self.lease_expired = Counter("jobgrid_leases_expired", "Leases that ran out and were requeued", registry=r)
        self.run_time = Histogram("jobgrid_job_run_seconds", "Run time of jobs run here", registry=r,
                                  buckets=(.001, .005, .01, .05, .1, .5, 1, 5, 10, 60, 300))
        self.heartbeat_rtt = Histogram("jobgrid_heartbeat_rtt_seconds", "Heartbeat round trip", registry=r,
                                       buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1))
        self.active = Gauge("jobgrid_active_queue", "Jobs queued or leased in the activeQueue", registry=r)
        self.backup = Gauge("jobgrid_backup_queue", "Replicas in the backupQueue", registry=r)
        self.ring_size = Gauge("jobgrid_ring_size", "Servers on the ring", registry=r)
        self.epoch = Gauge("jobgrid_ring_epoch", "Epoch of the ring this node follows", registry=r)
        self.peer_messages = Counter("jobgrid_peer_messages", "Peer messages this node answered, by transport",
                                     ["transport"], registry=r)
        self.busy = Gauge("jobgrid_runners_busy", "Worker processes running a job", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
