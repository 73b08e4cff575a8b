"""The end of table recovery (docs/decisions/0001)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from faust.tables.manager import TableManager as FaustTableManager
from faust.tables.recovery import Recovery
from mode.utils.queues import FlowControlEvent

from streams.faust_seam._base import CONTRACT

log = logging.getLogger(__name__)


class OrderedRecovery(Recovery):
    """Seek the stream partitions while they are still paused, clear the agent queues, and
    only then resume: nothing fetched for a stream partition can be in a queue when faust
    clears the queues."""

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        app, consumer = self.app, self.app.consumer
        self.log.info("Restore complete!")
        await app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callbacks = [asyncio.ensure_future(table.on_recovery_completed(
            self.actives_for_table[table], self.standbys_for_table[table]))
            for table in self.tables.values()]
        if callbacks:
            await asyncio.wait(callbacks)
        if app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again: generation %r, now %r",
                             generation_id, app.consumer_generation_id)
            return
        # each table's changelog partitions restored here, claimed before the streams
        # resume: another writer's records after the claim this restore never read
        # (decision 0016)
        for table, actives in self.actives_for_table.items():
            claim = getattr(table, "claim", None)
            if claim is not None and actives:
                claim({tp.partition for tp in actives}, generation_id)
        stream_tps = {tp for tp in consumer.assignment() if not self._is_changelog_tp(tp)}
        consumer.pause_partitions(stream_tps)
        if stream_tps:
            self.log.info("Seek stream partitions to committed offsets (still paused).")
            await self._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)
        if app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again during the seek")
            return
        self.completed.set()
        app.flow_control.resume()  # clears the queues: nothing of a stream partition is in them
        consumer.resume_partitions(stream_tps)
        consumer.resume_flow()
        await cast(Any, app)._fetcher.maybe_start()
        self.tables.on_actives_ready()
        if not app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        app.on_rebalance_end()
        log.info("Worker ready")  # the worker's own line: faust's logger is quietened


class TableManager(FaustTableManager):
    """faust's table manager with :class:`OrderedRecovery`."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = OrderedRecovery(self.app, self, beacon=self.beacon,
                                             loop=self.loop)
        return self._recovery


# mode names a service's logger after its class's module; keep faust's (quietened by
# common.log, WORKER_FAUST_LOG_LEVEL), as build.IdempotentProducer does. Set after the class:
# mode's __init_subclass__ replaces one inherited or set in the class body.
OrderedRecovery.logger = Recovery.logger
TableManager.logger = FaustTableManager.logger


CONTRACT.update({
    "S faust Recovery.on_recovery_completed": (
        Recovery, "on_recovery_completed", "6ef567acf072e46da3fccbccc6d66237"),
    "S faust TableManager.recovery": (FaustTableManager, "recovery", "f0bf5de78b4c3d235c3554010480f407"),
    # on_recovery_completed's caller: the state (paused partitions, the flow) it takes over
    "R faust Recovery._restart_recovery": (
        Recovery, "_restart_recovery", "6bd8a8558a2dffe4c60b8150f23d721b"),
    # app.flow_control.resume(): the agents' queues are cleared before the streams resume
    "R mode FlowControlEvent.resume (clears the queues)": (
        FlowControlEvent, "resume", "4dcdc1253fd0dcb40de18a3702503c01"),
})
