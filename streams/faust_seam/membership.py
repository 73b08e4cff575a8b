"""Group membership → the ownership lease (docs/decisions/0005)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from aiokafka.consumer.group_coordinator import CoordinatorGroupRebalance, GroupCoordinator
from aiokafka.protocol.group import JoinGroupRequest
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, ConsumerRebalanceListener

from common.clock import lease_clock
from streams.faust_seam._base import CONTRACT, _wrap


class MembershipListener:
    """What the hooks report for one consumer group; called from the consumer's thread.
    ``sent_at``: when the request was sent, on the lease clock
    (:func:`common.clock.lease_clock`, which counts a host suspend)."""

    def heartbeat(self, generation: int, sent_at: float, *, accepted: bool,
                  rebalance: bool) -> None: ...

    def synced(self, generation: int, sent_at: float) -> None: ...

    def revoked(self) -> None: ...

    def assigned(self, partitions_by_topic: dict[str, set[int]], generation: int) -> None: ...

    def member_reset(self) -> None:
        """The member, which had a member id, lost it (aiokafka's ``reset_generation``)."""


_listeners: dict[str, MembershipListener] = {}  # group id → listener


def watch_membership(group_id: str, listener: MembershipListener) -> None:
    """Report the membership of this process's consumer of ``group_id`` to ``listener``."""
    _install_membership_hooks()
    _listeners[group_id] = listener


def _install_membership_hooks() -> None:
    def heartbeat(original: Any) -> Any:
        async def _do_heartbeat(self: Any) -> Any:
            generation, sent_at = self.generation, lease_clock()
            ok = await original(self)
            listener = _listeners.get(self.group_id)
            if listener is not None:
                # True also answers REBALANCE_IN_PROGRESS (aiokafka keeps heart-beating
                # through a rebalance): that is no renewal, and it ends the lease.
                rebalance = self._rejoin_needed_fut.done()
                listener.heartbeat(generation, sent_at, accepted=bool(ok) and not rebalance,
                                   rebalance=rebalance)
            return ok
        return _do_heartbeat

    def sync(original: Any) -> Any:
        async def _send_sync_group_request(self: Any, request: Any) -> Any:
            generation, sent_at = self._coordinator.generation, lease_clock()
            assignment = await original(self, request)
            listener = _listeners.get(self.group_id)
            if assignment is not None and listener is not None:
                listener.synced(generation, sent_at)
            return assignment
        return _send_sync_group_request

    def revoked(original: Any) -> Any:
        def on_partitions_revoked(self: Any, revoked: Iterable[Any]) -> Any:
            listener = _listeners.get(str(self._thread.app.conf.id))
            if listener is not None:
                listener.revoked()  # before faust's callbacks: as early as possible
            return original(self, revoked)
        return on_partitions_revoked

    def assigned(original: Any) -> Any:
        async def on_partitions_assigned(self: Any, assigned: Iterable[Any]) -> None:
            listener = _listeners.get(str(self._thread.app.conf.id))
            assigned = list(assigned)
            if listener is not None:
                generation = self._thread._ensure_consumer()._coordinator.generation
                by_topic: dict[str, set[int]] = {}
                for tp in assigned:
                    by_topic.setdefault(tp.topic, set()).add(tp.partition)
                listener.assigned(by_topic, generation)
            await original(self, assigned)
        return on_partitions_assigned

    def reset(original: Any) -> Any:
        def reset_generation(self: Any) -> Any:
            listener = _listeners.get(self.group_id)
            if listener is not None and self.member_id != JoinGroupRequest.UNKNOWN_MEMBER_ID:
                listener.member_reset()
            return original(self)
        return reset_generation

    _wrap(GroupCoordinator, "_do_heartbeat", heartbeat)
    _wrap(GroupCoordinator, "reset_generation", reset)
    _wrap(CoordinatorGroupRebalance, "_send_sync_group_request", sync)
    _wrap(ConsumerRebalanceListener, "on_partitions_revoked", revoked)
    _wrap(ConsumerRebalanceListener, "on_partitions_assigned", assigned)


class LeaseAdapter(MembershipListener):
    """Feeds an :class:`~streams.lease.OwnershipLease` with the requests topic's partitions.

    A requests partition counts as owned only with the same partition of every table's
    changelog (``changelogs``): faust's assignor leaves out a changelog topic its metadata
    does not show yet ("Ignoring missing topic", seen on a 3-node cluster at start-up), and
    its table is then neither restored nor kept for that partition — the worker would decide
    the partition's events without the intents an earlier owner wrote, and send a second
    ``AddOrder``. Such partitions stay out of the lease (no WHMCS write) and ``unbacked`` is
    told (the worker exits so that a restart joins again, with the topic known)."""

    def __init__(self, lease: Any, topic: str, changelogs: Iterable[str] = (),
                 unbacked: Callable[[str], None] | None = None,
                 regranted: Callable[[str], None] | None = None) -> None:
        self.lease, self.topic = lease, topic
        self.changelogs = tuple(changelogs)
        self.unbacked = unbacked or (lambda _reason: None)
        self.regranted = regranted or (lambda _reason: None)

    def member_reset(self) -> None:
        self.lease.member_reset()

    def heartbeat(self, generation: int, sent_at: float, *, accepted: bool,
                  rebalance: bool) -> None:
        self.lease.heartbeat(generation, sent_at, accepted=accepted, rebalance=rebalance)

    def synced(self, generation: int, sent_at: float) -> None:
        self.lease.synced(generation, sent_at)

    def revoked(self) -> None:
        self.lease.rebalancing()

    def assigned(self, partitions_by_topic: dict[str, set[int]], generation: int) -> None:
        owned = set(partitions_by_topic.get(self.topic, set()))
        gaps = {changelog: sorted(owned - partitions_by_topic.get(changelog, set()))
                for changelog in self.changelogs}
        gaps = {changelog: missing for changelog, missing in gaps.items() if missing}
        for missing in gaps.values():
            owned -= set(missing)
        self.lease.assigned(owned, generation)
        if self.lease.regranted is not None:
            self.regranted(f"generation {generation} was given back to this worker after the "
                           "group had forgotten it (a static member's rejoin): another "
                           "process under the same WORKER_INSTANCE_ID may have held its "
                           "partitions meanwhile, so nothing of this process's is owned; "
                           "no WHMCS write was made for its partitions since")
            return
        if gaps:
            self.unbacked(f"generation {generation} assigned requests partitions "
                          f"{sorted(partitions_by_topic.get(self.topic, set()))} without "
                          + ", ".join(f"{c} {m}" for c, m in gaps.items()))


CONTRACT.update({
    "W aiokafka GroupCoordinator._do_heartbeat": (
        GroupCoordinator, "_do_heartbeat", "dc1d6632aaa68e964cf71958a17ebd8a"),
    "W aiokafka CoordinatorGroupRebalance._send_sync_group_request": (
        CoordinatorGroupRebalance, "_send_sync_group_request",
        "7429ca078ddf9bb7023fd095d118bd74"),
    "W faust ConsumerRebalanceListener.on_partitions_revoked": (
        ConsumerRebalanceListener, "on_partitions_revoked", "348c3aec879faf808e3ce86802ad8735"),
    "W faust ConsumerRebalanceListener.on_partitions_assigned": (
        ConsumerRebalanceListener, "on_partitions_assigned", "1c1f8406ad3698a6770a4ececb2f8074"),
    # heartbeat: _rejoin_needed_fut done means a rebalance (set here)
    "R aiokafka GroupCoordinator.request_rejoin": (
        GroupCoordinator, "request_rejoin", "f70a261c91c38cb53dbe591926f6221c"),
    # assigned: the generation read as faust reads it, thread._ensure_consumer()._coordinator
    # (made by AIOKafkaConsumer.start, hashed in build) .generation: set by the JoinGroup,
    # kept by the SyncGroup (wrapped above), reset when the member is lost
    "R faust AIOKafkaConsumerThread._ensure_consumer": (
        AIOKafkaConsumerThread, "_ensure_consumer", "ff4a4c693b7ec63f4a76dfb61c419380"),
    "R aiokafka CoordinatorGroupRebalance.perform_group_join (sets generation)": (
        CoordinatorGroupRebalance, "perform_group_join", "ff2c2109b2e9868dc23f43643160ea3d"),
    # member_reset: the member id reset (kept until the wrapped call runs)
    "W aiokafka GroupCoordinator.reset_generation": (
        GroupCoordinator, "reset_generation", "537aa37c531b4de9c2e24601634cc4b0"),
    # the callers the lease's hooks rely on (lease review): every heartbeat goes through
    # _do_heartbeat; the revocation is reported (on_partitions_revoked) before the JoinGroup
    # is sent; the member is reset right after its LeaveGroup; the assignment is reported
    # (on_partitions_assigned) once the SyncGroup is done. One of them changed (an inlined
    # heartbeat, a reset moved after a wait) would leave the lease valid after the member
    # left, with the hooks' own hashes unchanged.
    "R aiokafka GroupCoordinator._heartbeat_routine (calls _do_heartbeat)": (
        GroupCoordinator, "_heartbeat_routine", "61d01028952239d03c882d0bc6c0259f"),
    "R aiokafka GroupCoordinator.ensure_active_group (join prepared first)": (
        GroupCoordinator, "ensure_active_group", "33c84c1a93012e812cb3d1a6774ded18"),
    "R aiokafka GroupCoordinator._on_join_prepare (revocation reported)": (
        GroupCoordinator, "_on_join_prepare", "4d9524afc0ee2c2fd54cd8397e4fc216"),
    "R aiokafka GroupCoordinator._maybe_leave_group (reset after LeaveGroup)": (
        GroupCoordinator, "_maybe_leave_group", "016cd88a16e6c4b5b08ecab793e0fde0"),
    "R aiokafka GroupCoordinator._on_join_complete (assignment reported)": (
        GroupCoordinator, "_on_join_complete", "0b0b3d204b408f3ce3c3cc7d2168d642"),
})
