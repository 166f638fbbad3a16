"""SWIM-style membership (Das, Gupta, Motivala 2002; HashiCorp memberlist) for large grids.

Pure logic, no IO and no clock: `SwimMembership` (membership.py) takes messages and timers with `now`
and returns what to send and which rings it adopted, behind the same views as the all-to-all
`jobgrid.membership.Membership`. config.py chooses between the two modes.
"""

from __future__ import annotations

from .config import MembershipMode, SwimConfig, membership_mode
from .membership import Send, Step, SwimMembership

__all__ = ["MembershipMode", "Send", "Step", "SwimConfig", "SwimMembership", "membership_mode"]
