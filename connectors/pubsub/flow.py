"""Flow-control accounting of one Subscribe stream (pure, thread-safe).

Two numbers bound what Salesforce may push at us:

* ``outstanding`` — events requested but not yet delivered. Never above ``capacity``
  (``num_requested``, ≤ 100: the Pub/Sub API caps the total outstanding at 100 and adds
  extra requests to the pending amount, so asking beyond it only builds debt).
* ``buffered`` — events delivered but not yet consumed (written to Kafka). With
  ``outstanding`` it stays within ``buffer_limit``: a slow Kafka stops the requests
  instead of filling memory.

The reader thread calls :meth:`delivered` as responses arrive and the processing loop calls
:meth:`consumed` after a batch; each returns how many events to ask for now (0 = send no
FetchRequest). Requests are sent in chunks of at least ``min_request`` to avoid one tiny
FetchRequest per event; whenever ``buffered`` drains to 0 the full deficit is requested,
so the stream can never starve (pending 0 for ~60 s makes Salesforce close it).
"""

from __future__ import annotations

import threading

MAX_OUTSTANDING = 100


class FlowControl:
    def __init__(self, capacity: int, buffer_limit: int | None = None,
                 min_request: int | None = None) -> None:
        if not 1 <= capacity <= MAX_OUTSTANDING:
            raise ValueError(f"num_requested must be 1..{MAX_OUTSTANDING}, got {capacity}")
        self.capacity = capacity
        self.buffer_limit = max(buffer_limit or capacity, capacity)
        self.min_request = max(1, min_request if min_request is not None else capacity // 4)
        self.outstanding = 0
        self.buffered = 0
        self.requested_total = 0
        self._lock = threading.Lock()

    def initial(self) -> int:
        """Amount for the stream's first FetchRequest."""
        with self._lock:
            return self._take(self._room(), force=True)

    def delivered(self, count: int) -> int:
        with self._lock:
            self.outstanding = max(0, self.outstanding - count)
            self.buffered += count
            return self._take(self._room(), force=False)

    def consumed(self, count: int) -> int:
        with self._lock:
            self.buffered = max(0, self.buffered - count)
            return self._take(self._room(), force=self.buffered == 0)

    def _room(self) -> int:
        return max(0, min(self.capacity - self.outstanding,
                          self.buffer_limit - self.buffered - self.outstanding))

    def _take(self, room: int, *, force: bool) -> int:
        if room <= 0 or (room < self.min_request and not force):
            return 0
        self.outstanding += room
        self.requested_total += room
        return room
