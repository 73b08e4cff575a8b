"""Offsets asked of a partition's old leader are asked again with fresh metadata
(docs/decisions/0015).

A partition without a position (assigned with nothing committed — faust's
``__assignor-__leader`` after every rebalance —, a seek to its beginning or end, an offset
out of range) gets one from a ListOffsets request to its leader as the consumer's metadata
knows it (``Fetcher._update_fetch_positions``). A node that has lost the leadership answers
``NOT_LEADER_FOR_PARTITION``; aiokafka 0.14 logs "Failed fetch offsets", waits
``retry_backoff_ms`` and asks the same node again, and again — that path never asks for new
metadata (its fetch path and ``_retrieve_offsets`` do), so it ends only at the next periodic
refresh (``metadata_max_age_ms``, 5 minutes). Meanwhile the consumer fetches nothing on
that node's requests; a worker of a 3-node chaos run stood 2.5 minutes so, until its stall
watchdog restarted it. Kafka's Java consumer had the same bug (KAFKA-9535).

The seam wraps ``Fetcher._proc_offset_request``: an error that says the metadata is stale
(aiokafka's ``invalid_metadata``: not the leader, unknown partition, leader unavailable, a
broken connection) asks for a metadata update before it is raised to the caller, which
retries after its backoff with the leader the update found.
"""

from __future__ import annotations

from typing import Any

from aiokafka.consumer.fetcher import Fetcher
from aiokafka.errors import KafkaError

from streams.faust_seam._base import CONTRACT, _wrap


def refresh_metadata_on_stale_offsets() -> None:
    """Install the wrap (process-wide, once): every aiokafka consumer of the process."""
    def wrap(original: Any) -> Any:
        async def _proc_offset_request(self: Any, node_id: int, topic_data: Any) -> Any:
            try:
                return await original(self, node_id, topic_data)
            except KafkaError as exc:
                if exc.invalid_metadata:
                    self._client.force_metadata_update()
                raise
        return _proc_offset_request

    _wrap(Fetcher, "_proc_offset_request", wrap)


CONTRACT.update({
    "W aiokafka Fetcher._proc_offset_request": (
        Fetcher, "_proc_offset_request", "40c09472da94d88c35bdbd30c44cc3a0"),
    "R aiokafka Fetcher._update_fetch_positions (no metadata update on an error)": (
        Fetcher, "_update_fetch_positions", "d7774d8241dc6a7e04ce2172518adfa9"),
})
