"""The worker's flow without faust or Kafka: lanes, checkpoint and handler over dict tables.

``kit.process(records)`` admits records as the agent does and returns once every one of them
has left the worker (finished, fenced or dead-lettered); what was sent, committed and
written durably is recorded for the tests to check.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from common.avro import AvroSerde
from streams.checkpoint import Checkpoint
from streams.decide import Context
from streams.guard import Guard, GuardReads
from streams.handler import DeadLetter, EventHandler, RawRecord, decode
from streams.lanes import Admitted, Lanes
from streams.provision import Provisioner, ProvisionPolicy
from streams.state import GroupCommit, OrderState

SERDE = AvroSerde("provision_request")


class Durable:
    """Dict tables whose flush snapshots what is durable."""

    def __init__(self) -> None:
        self.idem: dict[str, Any] = {}
        self.intents: dict[str, Any] = {}
        self.durable_idem: dict[str, Any] = {}
        self.durable_intents: dict[str, Any] = {}
        self.flushes = 0

    async def flush(self) -> None:
        self.flushes += 1
        self.durable_idem = copy.deepcopy(self.idem)
        self.durable_intents = copy.deepcopy(self.intents)


class ListEmitter:
    """Checks that an outcome is durable before it is sent; ``fail_next`` raises once."""

    def __init__(self, tables: Durable) -> None:
        self.sent: list[dict[str, Any]] = []
        self.letters: list[DeadLetter] = []
        self.tables, self.fail_next = tables, False

    async def send_outcome(self, outcome: dict[str, Any]) -> None:
        entry = self.tables.durable_idem[outcome["order_id"]][outcome["idem_key"]]
        assert outcome in [entry.get("outcome")] + [d["outcome"] for d in entry["dups"].values()]
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("crash before the outcome was sent")
        self.sent.append(outcome)

    async def send_dead_letter(self, letter: DeadLetter) -> None:
        self.letters.append(letter)


class Kit:
    def __init__(self, *, salesforce: Any, whmcs_client: Any, lease: Any = None,
                 parallelism: int = 4, policy: ProvisionPolicy | None = None,
                 linger_s: float = 0.01, intent_lease_s: float = 10.0) -> None:
        self.tables = Durable()
        self.state = OrderState(self.tables.idem, self.tables.intents, self.tables.flush)
        self.emitter = ListEmitter(self.tables)
        self.guard = Guard(salesforce)
        self.commits: list[dict[int, int]] = []
        self.released: list[Any] = []
        self.checkpoint = Checkpoint(self._read, commit=self._commit, seek=lambda p, o: None)
        self.lanes = Lanes(self.checkpoint, self.released.append)
        self.provisioner = Provisioner(whmcs_client, policy or ProvisionPolicy(
            retry_deadline_s=5, whmcs_timeout_s=1, lookup_grace_s=0.05),
            parallelism=parallelism)
        self.handler = EventHandler(
            state=self.state, reads=GuardReads(self.guard, linger_s=linger_s),
            provisioner=self.provisioner, emitter=self.emitter, context=Context(),
            durable=GroupCommit(self.state.flush), lease=lease, writer_id="kit",
            intent_lease_s=intent_lease_s)
        self.finished: list[tuple[int, int]] = []

    def _read(self, wanted: Any) -> dict[int, tuple[int, list[int]]]:
        base = {p: (self.commits[-1].get(p, 0) if self.commits else 0) for p in wanted}
        return {p: (base[p], list(range(base[p], end))) for p, end in wanted.items()}

    async def _commit(self, offsets: Any) -> bool:
        self.commits.append(dict(offsets))
        return True

    async def process(self, records: list[RawRecord]) -> None:
        """Admit ``records`` as the agent does; return once every one has left the worker."""
        before = len(self.released)
        for rec in records:
            item = decode(SERDE, rec)
            if isinstance(item, DeadLetter):
                letter = item

                async def dead(letter: DeadLetter = letter) -> bool:
                    await self.emitter.send_dead_letter(letter)
                    return True
                await self.lanes.run_alone(Admitted(rec.partition, rec.offset, object(), dead))
                continue

            async def work(event: Any = item, rec: RawRecord = rec) -> bool:
                done = await self.handler.handle(event, rec)
                if done:
                    self.finished.append((rec.partition, rec.offset))
                return done
            await self.lanes.admit(item.order_id,
                                   Admitted(rec.partition, rec.offset, object(), work))
        while len(self.released) - before < len(records):
            await asyncio.sleep(0.005)
            if self.lanes.crashed is not None:
                raise self.lanes.crashed


def records(values: list[Any], *, partition: int = 0, start: int = 0,
            generation: int = 1) -> list[RawRecord]:
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bytes):
            out.append(RawRecord(b"x", v, "req", partition, start + i, generation=generation))
        else:
            out.append(RawRecord(v["OrderId__c"].encode(), SERDE.encode(v), "req", partition,
                                 start + i, headers=SERDE.headers(), generation=generation))
    return out
