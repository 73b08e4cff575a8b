"""The one module that touches faust-streaming's and aiokafka's internals.

Everything the worker needs from the two libraries beyond their public API lives here,
behind small functions; nothing else in the project imports a private name of either. The
versions it was written and verified against are pinned (:data:`PINNED`, and exactly in
``pyproject.toml``); :func:`check_versions` refuses any other at start-up, and
``tests/streams/test_faust_seam.py`` fails when the source of a function wrapped here
changes upstream (:data:`WRAPPED`: a hash of each).

Group membership, for the ownership lease (:mod:`streams.lease`):

* ``aiokafka.consumer.group_coordinator.GroupCoordinator._do_heartbeat`` — wrapped to tell
  the lease when a heartbeat *sent* at ``t`` was accepted (renewal), refused, or answered
  with a rebalance;
* ``CoordinatorGroupRebalance._send_sync_group_request`` — the SyncGroup send time, which
  starts the lease of a new generation;
* ``faust.transport.drivers.aiokafka.ConsumerRebalanceListener`` — revocation (called
  synchronously in the consumer's thread, before the rejoin) and assignment (with the
  generation), filtered to the requests topic.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import time
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any

log = logging.getLogger(__name__)

PINNED = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}


class UnsupportedVersion(RuntimeError):
    """faust-streaming or aiokafka is not the version this module was verified against."""


def check_versions() -> None:
    """Raise :class:`UnsupportedVersion` (one line) unless the pinned versions are installed."""
    wrong = []
    for dist, wanted in PINNED.items():
        try:
            found = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found = "not installed"
        if found != wanted:
            wrong.append(f"{dist} {found} (needs {wanted})")
    if wrong:
        raise UnsupportedVersion(
            "the worker patches library internals verified only for "
            + ", ".join(f"{d}=={v}" for d, v in PINNED.items()) + "; found "
            + ", ".join(wrong) + " (see streams/faust_seam.py)")


def _group_coordinator() -> Any:
    from aiokafka.consumer.group_coordinator import GroupCoordinator
    return GroupCoordinator


def _group_rebalance() -> Any:
    from aiokafka.consumer.group_coordinator import CoordinatorGroupRebalance
    return CoordinatorGroupRebalance


def _rebalance_listener() -> Any:
    from faust.transport.drivers.aiokafka import ConsumerRebalanceListener
    return ConsumerRebalanceListener


# qualified name → (owner loader, attribute, sha256 of the upstream source it was written
# against). The contract test recomputes the hashes.
WRAPPED: dict[str, tuple[Callable[[], Any], str, str]] = {
    "aiokafka GroupCoordinator._do_heartbeat": (
        _group_coordinator, "_do_heartbeat", "dc1d6632aaa68e964cf71958a17ebd8a"),
    "aiokafka CoordinatorGroupRebalance._send_sync_group_request": (
        _group_rebalance, "_send_sync_group_request", "7429ca078ddf9bb7023fd095d118bd74"),
    "faust ConsumerRebalanceListener.on_partitions_revoked": (
        _rebalance_listener, "on_partitions_revoked", "348c3aec879faf808e3ce86802ad8735"),
    "faust ConsumerRebalanceListener.on_partitions_assigned": (
        _rebalance_listener, "on_partitions_assigned", "1c1f8406ad3698a6770a4ececb2f8074"),
}


def _faust_consumer() -> Any:
    from faust.transport.consumer import Consumer
    return Consumer


# Functions this module relies on without wrapping them (their behaviour is assumed):
# hashed the same way.
RELIED_ON: dict[str, tuple[Callable[[], Any], str, str]] = {
    # release(): an acked message leaves _unacked_messages (wait_empty stops waiting for
    # it) and only Consumer.ack feeds the offsets faust commits
    "faust Consumer._clean_unacked_messages": (
        _faust_consumer, "_clean_unacked_messages", "11be2587e71c9162510ba634577e1da5"),
    "faust Consumer.ack": (_faust_consumer, "ack", "5fcf41cf45153475de3790dc56fec1b8"),
}


def source_hash(owner: Any, attribute: str) -> str:
    """The first 32 hex digits of the sha256 of ``owner.attribute``'s upstream source."""
    fn = getattr(owner, attribute)
    fn = getattr(fn, "__sfprov_original__", fn)
    return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:32]


# -- group membership → the ownership lease ------------------------------------------------

class MembershipListener:
    """What the hooks report, for one consumer group (implemented by the worker's lease
    adapter). Called from the consumer's thread."""

    def heartbeat(self, generation: int, sent_at: float, *, accepted: bool,
                  rebalance: bool) -> None: ...

    def synced(self, generation: int, sent_at: float) -> None: ...

    def revoked(self) -> None: ...

    def assigned(self, partitions_by_topic: dict[str, set[int]], generation: int) -> None: ...


_listeners: dict[str, MembershipListener] = {}  # group id → listener


def watch_membership(group_id: str, listener: MembershipListener) -> None:
    """Report the membership of ``group_id``'s consumer (this process) to ``listener``."""
    _install_membership_hooks()
    _listeners[group_id] = listener


def _wrap(owner: Any, attribute: str, make: Callable[[Any], Any]) -> None:
    original = getattr(owner, attribute)
    if getattr(original, "__sfprov_original__", None) is not None:
        return  # installed already
    wrapper = make(original)
    wrapper.__sfprov_original__ = original
    setattr(owner, attribute, wrapper)


def _install_membership_hooks() -> None:
    def heartbeat(original: Any) -> Any:
        async def _do_heartbeat(self: Any) -> Any:
            generation, sent_at = self.generation, time.monotonic()
            ok = await original(self)
            listener = _listeners.get(self.group_id)
            if listener is not None:
                # True also answers REBALANCE_IN_PROGRESS (aiokafka keeps heart-beating
                # through a rebalance): that is no renewal, and ends the lease.
                rebalance = self._rejoin_needed_fut.done()
                listener.heartbeat(generation, sent_at, accepted=bool(ok) and not rebalance,
                                   rebalance=rebalance)
            return ok
        return _do_heartbeat

    def sync(original: Any) -> Any:
        async def _send_sync_group_request(self: Any, request: Any) -> Any:
            generation, sent_at = self._coordinator.generation, time.monotonic()
            assignment = await original(self, request)
            listener = _listeners.get(self.group_id)
            if assignment is not None and listener is not None:
                listener.synced(generation, sent_at)
            return assignment
        return _send_sync_group_request

    def revoked(original: Any) -> Any:
        def on_partitions_revoked(self: Any, revoked: Iterable[Any]) -> Any:
            listener = _listeners.get(_group_of(self))
            if listener is not None:
                listener.revoked()  # before faust's callbacks: as early as possible
            return original(self, revoked)
        return on_partitions_revoked

    def assigned(original: Any) -> Any:
        async def on_partitions_assigned(self: Any, assigned: Iterable[Any]) -> None:
            listener = _listeners.get(_group_of(self))
            if listener is not None:
                generation = self._thread._ensure_consumer()._coordinator.generation
                by_topic: dict[str, set[int]] = {}
                assigned = list(assigned)
                for tp in assigned:
                    by_topic.setdefault(tp.topic, set()).add(tp.partition)
                listener.assigned(by_topic, generation)
            await original(self, assigned)
        return on_partitions_assigned

    _wrap(_group_coordinator(), "_do_heartbeat", heartbeat)
    _wrap(_group_rebalance(), "_send_sync_group_request", sync)
    _wrap(_rebalance_listener(), "on_partitions_revoked", revoked)
    _wrap(_rebalance_listener(), "on_partitions_assigned", assigned)


def _group_of(rebalance_listener: Any) -> str:
    return str(rebalance_listener._thread.app.conf.id)


class LeaseAdapter(MembershipListener):
    """Feeds an :class:`~streams.lease.OwnershipLease` with the membership of the requests
    topic's partitions."""

    def __init__(self, lease: Any, topic: str) -> None:
        self.lease, self.topic = lease, topic

    def heartbeat(self, generation: int, sent_at: float, *, accepted: bool,
                  rebalance: bool) -> None:
        self.lease.heartbeat(generation, sent_at, accepted=accepted, rebalance=rebalance)

    def synced(self, generation: int, sent_at: float) -> None:
        self.lease.synced(generation, sent_at)

    def revoked(self) -> None:
        self.lease.rebalancing()

    def assigned(self, partitions_by_topic: dict[str, set[int]], generation: int) -> None:
        self.lease.assigned(partitions_by_topic.get(self.topic, set()), generation)


# -- messages ------------------------------------------------------------------------------

def release(consumer: Any, message: Any) -> None:
    """Let faust forget ``message`` without counting it as processed: it no longer holds up
    a rebalance (``wait_empty``), and no commit moves past it (only ``Consumer.ack`` feeds
    the offsets faust commits). For events this worker was fenced from: the partition's
    new owner redelivers them."""
    message.acked = True  # later acks of the message are no-ops (faust Message.ack)
    consumer._unacked_messages.discard(message)
