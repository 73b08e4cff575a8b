"""A connector whose Salesforce login is refused reads no events: it says so on /readyz,
as the worker and the sink do, instead of counting healthy while events age towards the
72-h retention (the alert pages only after 15 minutes)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from common.errors import SalesforceAuthError, SalesforceError
from common.settings import ConnectorSettings, KafkaSettings
from connectors import observability
from connectors.source import Connector


class Pubsub:
    def __init__(self, refresh_fails: bool, unreachable: int = 0) -> None:
        self.refresh_fails, self.refreshes, self.unreachable = refresh_fails, 0, unreachable

    def get_schema(self, _schema_id: str) -> None:
        return None

    def refresh_auth(self) -> None:
        self.refreshes += 1
        if self.unreachable:
            self.unreachable -= 1
            raise SalesforceError("token endpoint unreachable: ConnectTimeout", retryable=True)
        if self.refresh_fails:
            raise SalesforceAuthError("invalid_grant: user hasn't approved this consumer",
                                      retryable=False)


def connector(pubsub: Pubsub) -> Any:
    kafka = KafkaSettings.load({}, bootstrap_servers="127.0.0.1:9")  # never reached
    conn = Connector(kafka=kafka, salesforce=None,  # type: ignore[arg-type]
                     connector=ConnectorSettings.load({}, name="auth-test"), auth=object(),
                     pubsub=pubsub)  # type: ignore[arg-type]
    conn.writer.close()
    conn._stop.wait = lambda _delay: False  # type: ignore[method-assign]  # no real waits
    # a connector that ran: a stream was accepted (before that, any failed attempt is not
    # ready at once, an expired token too: test_source_review3)
    conn.health.accept()
    return conn


def expired() -> SalesforceAuthError:
    return SalesforceAuthError("UNAUTHENTICATED: auth.error", retryable=True)


def test_a_refused_login_makes_the_connector_not_ready_until_a_stream_answers():
    conn = connector(Pubsub(refresh_fails=True))
    assert conn._recover(expired())
    ok, details = observability.ready(conn)
    assert ok is False
    assert "login" in str(details) and "invalid_grant" in str(details)
    assert conn.health_check()[0] is False
    conn._handle(SimpleNamespace(consumed=lambda _n: None), [])  # a stream answers
    assert observability.ready(conn)[0] is True


def test_a_fresh_token_refused_again_is_a_refusal_one_expired_token_is_not():
    """One auth error is a token expiring (re-authenticated at once, still ready); a second
    in a row after a successful re-authentication is Salesforce refusing this login (a wrong
    org, the user's access)."""
    pubsub = Pubsub(refresh_fails=False)
    conn = connector(pubsub)
    assert conn._recover(expired())
    assert observability.ready(conn)[0] is True
    assert conn._recover(expired())
    assert observability.ready(conn)[0] is False and pubsub.refreshes == 2


def test_a_token_endpoint_out_of_reach_is_no_refused_login():
    """The re-authentication timing out (a network blip, a 5xx) leaves the expired token
    cached, so the next subscribe is refused again: neither is Salesforce refusing the
    login, and /readyz must not send the operator to the credentials."""
    pubsub = Pubsub(refresh_fails=False, unreachable=1)
    conn = connector(pubsub)
    assert conn._recover(expired())  # the refresh times out
    assert observability.ready(conn)[0] is True
    assert conn._recover(expired())  # the expired token again; this refresh works
    assert observability.ready(conn)[0] is True and pubsub.refreshes == 2


@pytest.mark.parametrize("refresh_fails", [False, True])
def test_auth_errors_back_off_one_step_per_error(refresh_fails):
    """The first auth error is retried at once, then the backoff grows one step per error,
    also when the re-authentication fails (it counted two per error, reaching its ceiling
    in a few failures)."""
    conn = connector(Pubsub(refresh_fails=refresh_fails))
    for _ in range(3):
        conn._recover(expired())
    assert conn.backoff.attempt == 3


def test_a_token_endpoint_asking_for_later_is_waited_out_not_asked_again_at_once():
    """A 429 from the token endpoint with Retry-After 120: the connector asked it again at
    once (a second login), then waited its own backoff, 1 s to 30 s (regression review)."""
    pubsub = Pubsub(refresh_fails=False)
    conn = connector(pubsub)
    waits: list[float] = []
    conn._stop.wait = lambda delay: waits.append(delay) or False  # type: ignore[method-assign]
    later = SalesforceAuthError("JWT bearer login refused: http_429: Too Many Requests",
                                error_code="http_429", status=429, retryable=True,
                                retry_after=120.0)
    assert conn._recover(later)
    assert pubsub.refreshes == 0
    assert waits and max(waits) >= 120.0, waits
    assert observability.ready(conn)[0] is True  # "later" is no refused login
