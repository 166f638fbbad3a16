"""The SWIM peer messages, as msgspec Structs (one tagged union, so a shell decodes any of them at once).

Every message carries its sender and the sender's ring key (epoch, proposer): a receiver that is behind
asks the sender for its ring (`RingPull`), which is how a node that missed the piggybacked change
catches up (anti-entropy on the probe traffic itself).
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

import msgspec

from ..protocol import Epoch, Host, Member, NodeId, Port, RingState

Updates = Annotated[list["Update"], msgspec.Meta(max_length=256)]
Round = Annotated[int, msgspec.Meta(ge=0)]


class NodeUpdate(msgspec.Struct, frozen=True, tag="node"):
    """What one member says about another: alive, suspect or dead at an incarnation."""

    node: NodeId
    state: Literal["alive", "suspect", "dead"]
    incarnation: Annotated[int, msgspec.Meta(ge=0)]
    origin: NodeId  # who says so: distinct origins confirm a suspicion


class RingDelta(msgspec.Struct, frozen=True, tag="ring"):
    """A committed ring change, as the difference from the ring it was built on."""

    base_epoch: Epoch
    base_proposer: Annotated[str, msgspec.Meta(max_length=64)]
    epoch: Epoch
    proposer: NodeId
    added: Annotated[list[Member], msgspec.Meta(max_length=4096)] = []
    removed: Annotated[list[NodeId], msgspec.Meta(max_length=4096)] = []

    def base_key(self) -> tuple[int, str]:
        return (self.base_epoch, self.base_proposer)

    def key(self) -> tuple[int, str]:
        return (self.epoch, self.proposer)

    def apply(self, base: RingState) -> RingState:
        gone = set(self.removed)
        members = [m for m in base.members if m.id not in gone] + list(self.added)
        return RingState(epoch=self.epoch, members=members, proposer=self.proposer)


Update = Union[NodeUpdate, RingDelta]


class Msg(msgspec.Struct, frozen=True, tag_field="t"):
    sender: NodeId
    ip: Host           # where the sender is reached (memberlist's SourceAddr / SourcePort)
    port: Port
    epoch: Epoch       # the sender's ring key
    proposer: Annotated[str, msgspec.Meta(max_length=64)]

    def ring_key(self) -> tuple[int, str]:
        return (self.epoch, self.proposer)


class Ping(Msg, frozen=True, tag="ping"):
    seq: int
    target: NodeId
    updates: Updates = []
    active: Annotated[int, msgspec.Meta(ge=0)] = 0  # the sender's queued jobs (runners steal from the busiest)


class Ack(Msg, frozen=True, tag="ack"):
    seq: int
    about: NodeId  # the member that answered: the sender, or the target an indirect probe reached
    updates: Updates = []
    active: Annotated[int, msgspec.Meta(ge=0)] = 0


class PingReq(Msg, frozen=True, tag="ping-req"):
    seq: int
    target: NodeId
    updates: Updates = []


class Prepare(Msg, frozen=True, tag="prepare"):
    """Phase 1 of the ring round that decides epoch `slot` (built on the sender's ring)."""

    slot: Epoch
    round: Round
    catchup: RingDelta | None = None  # the change that made the sender's ring: a voter one change behind applies it


class Promise(Msg, frozen=True, tag="promise"):
    slot: Epoch
    round: Round
    leader: NodeId
    ok: bool
    promised_round: Round = 0          # on refusal: the ballot this node promised instead
    promised_leader: Annotated[str, msgspec.Meta(max_length=64)] = ""
    accepted_round: Round = 0
    accepted_leader: Annotated[str, msgspec.Meta(max_length=64)] = ""
    accepted: RingDelta | None = None


class Accept(Msg, frozen=True, tag="accept"):
    slot: Epoch
    round: Round
    value: RingDelta
    catchup: RingDelta | None = None


class Accepted(Msg, frozen=True, tag="accepted"):
    slot: Epoch
    round: Round
    leader: NodeId
    ok: bool


class RingPull(Msg, frozen=True, tag="pull"):
    pass


class RingPush(Msg, frozen=True, tag="push"):
    ring: RingState


class JoinRequest(Msg, frozen=True, tag="join"):
    pass


class JoinRedirect(Msg, frozen=True, tag="redirect"):
    leader: Member


class JoinReply(Msg, frozen=True, tag="welcome"):
    ring: RingState


SwimMessage = Union[Ping, Ack, PingReq, Prepare, Promise, Accept, Accepted, RingPull, RingPush,
                    JoinRequest, JoinRedirect, JoinReply]
