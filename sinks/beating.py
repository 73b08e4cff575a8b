"""The Salesforce client as the sink's flushes call it: each call keeps the poll loop's
/livez heartbeat alive for as long as the call may last (:class:`BeatingClient`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from sinks.writer import CollectionClient

#: the exchanges one SalesforceClient call may make (common.salesforce: _call's two attempts,
#: each after a login or a re-login when the token is missing or the session expired)
CALL_EXCHANGES = 4


class BeatingClient:
    """The Salesforce client as the sink calls it: every call beats the poll loop's heartbeat
    (/livez) as it starts and as it ends, and the loop counts as alive through the call for
    as long as the client bounds one (``SF_TIMEOUT_S``): a slow call is progress, not a
    wedge (:mod:`common.probes`). Beaten only at the top of the loop, a flush of several
    calls (a batch bisected to the record Salesforce refuses, describes, the fence check),
    or one call longer than the liveness silence, was one silence: with a slow but working
    Salesforce the liveness probe killed the sink mid-write. The credit is the call's worst
    case: with one SF_TIMEOUT_S, a call that re-logged in first (``SF_TIMEOUT_S=120``) failed
    the probe all the same."""

    def __init__(self, client: CollectionClient, beat: Callable[..., None]) -> None:
        self._client = client
        self._beat = beat  # Sink.beat
        # a SalesforceClient's call is at most four exchanges each bounded by SF_TIMEOUT_S: a
        # login, the request, and after an expired session a re-login and the request again
        # (a test's fake has no settings: its calls get no credit)
        self.bound_s: float = CALL_EXCHANGES * getattr(
            getattr(client, "settings", None), "timeout_s", 0.0)

    def update_collection(self, records: list[dict[str, Any]], *,
                          all_or_none: bool = False) -> list[dict[str, Any]]:
        with self._call():
            return self._client.update_collection(records, all_or_none=all_or_none)

    def describe(self, sobject: str) -> dict[str, Any]:
        with self._call():
            return self._client.describe(sobject)

    @contextlib.contextmanager
    def _call(self) -> Iterator[None]:
        self._beat(ahead_s=self.bound_s)
        try:
            yield
        finally:
            self._beat()
