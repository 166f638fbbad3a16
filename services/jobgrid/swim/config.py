"""SWIM timings in one place (memberlist's config.go, scaled to the grid's 0.5 s heartbeat), and the
choice between all-to-all heartbeats and SWIM.

Why the cut-over is at 32 members (docs/deploy.md, "Membership at scale"): all-to-all heartbeats were
measured at 8, 16 and 32 nodes (about 1.3 milli-cores per peer per node, no false removal at 32 on a
saturated machine) and give a deterministic fence (1.2 s) and detection (2 s). SWIM costs a constant ~2
messages per node per period at any size, but detects in the suspicion timeout (4 x log10(N) periods) and
fences a partitioned minority only as fast as its probes reveal it (see membership.py). Up to 32 the
all-to-all cost is small (4 % of a core per node) and its guarantees are tighter; beyond the largest size
measured, SWIM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError

MembershipMode = Literal["all-to-all", "swim", "auto"]
MODES: tuple[str, ...] = ("all-to-all", "swim", "auto")
SWIM_ABOVE = 32  # "auto": all-to-all up to this many ring members, SWIM above


def membership_mode(setting: str, ring_size: int, swim_above: int = SWIM_ABOVE) -> Literal["all-to-all", "swim"]:
    """The mode a node runs with its committed ring: a function of the ring alone, so every node holding the
    same ring runs the same mode (both modes answer both kinds of message while a change spreads)."""
    if setting not in MODES:
        raise ConfigError(f"membership must be one of {', '.join(MODES)}, got {setting!r}")
    if setting == "auto":
        return "swim" if ring_size > swim_above else "all-to-all"
    return setting  # type: ignore[return-value]


@dataclass(frozen=True, kw_only=True)
class SwimConfig:
    """Durations in seconds, multipliers as in memberlist (its LAN preset, with a 0.5 s period)."""

    period: float = 0.5            # protocol period: one probe per member per period
    probe_timeout: float = 0.2     # direct probe unanswered this long: ask `indirect_checks` members
    indirect_checks: int = 3       # k of the paper
    retransmit_mult: int = 4       # lambda: each update is piggybacked lambda * ceil(log10(N + 1)) times
    suspicion_mult: int = 4        # suspicion lasts suspicion_mult * max(1, log10 N) periods at least ...
    suspicion_max_mult: int = 6    # ... and this many times that at most (fewer independent confirmations)
    max_piggyback: int = 64        # updates carried by one message (~2.5 kB: peer messages are HTTP, not 1.4 kB UDP)
    fence_fraction: float = 0.5    # no answered probe sent within this part of the shortest suspicion: fenced
    fence_probes: int = 8          # ... or fewer than a quarter of the last this many probes answered: fenced
    round_periods: float = 4.0     # a ring round not decided in this many periods is abandoned
    join_batch: int = 64           # joiners admitted by one ring change
    join_retry_periods: float = 6.0  # a joiner with no answer asks again after this many periods
    reconnect_periods: int = 4     # every this many periods, ping one member held dead (it may be back)
    pull_periods: float = 3.0      # an unanswered ring pull may be sent again after this many periods

    def __post_init__(self) -> None:
        for name in ("period", "probe_timeout", "round_periods", "join_retry_periods", "pull_periods"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or v <= 0:
                raise ConfigError(f"swim {name} must be a positive number, got {v!r}")
        if self.probe_timeout >= self.period:
            raise ConfigError(f"swim probe_timeout ({self.probe_timeout}) must be shorter than the period "
                              f"({self.period}): the indirect probes need the rest of it")
        for name in ("indirect_checks", "retransmit_mult", "suspicion_mult", "suspicion_max_mult",
                     "max_piggyback", "join_batch", "fence_probes", "reconnect_periods"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"swim {name} must be a positive whole number, got {v!r}")
        if not 0 < self.fence_fraction < 1:
            raise ConfigError(f"swim fence_fraction must be between 0 and 1, got {self.fence_fraction!r}: a cut-off "
                              "node must fence before anyone can declare it dead")

    def fence_window(self, n: int) -> float:
        """How old the newest answered probe may be (by its send time) for a node to keep quorum."""
        return self.fence_fraction * self.suspicion_min(n)

    def retransmit_limit(self, n: int) -> int:
        """How many times one update is piggybacked: lambda * ceil(log10(N + 1)) (memberlist)."""
        return self.retransmit_mult * max(1, math.ceil(math.log10(n + 1)))

    def suspicion_min(self, n: int) -> float:
        return self.suspicion_mult * max(1.0, math.log10(max(1, n))) * self.period

    def suspicion_max(self, n: int) -> float:
        return self.suspicion_max_mult * self.suspicion_min(n)

    def confirmations_wanted(self, n: int) -> int:
        """Independent suspicions that shrink a suspicion to its minimum (memberlist: mult - 2)."""
        k = self.suspicion_mult - 2
        return 0 if n - 2 < k else k
