"""A connector whose Salesforce login is refused reads no events: it says so on /readyz,
as the worker and the sink do, instead of counting healthy while events age towards the
72-h retention (the alert pages only after 15 minutes)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from common.errors import SalesforceAuthError
from common.settings import ConnectorSettings, KafkaSettings
from connectors import observability
from connectors.source import Connector


class Pubsub:
    def __init__(self, refresh_fails: bool) -> None:
        self.refresh_fails, self.refreshes = refresh_fails, 0

    def get_schema(self, _schema_id: str) -> None:
        return None

    def refresh_auth(self) -> None:
        self.refreshes += 1
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


def test_auth_errors_back_off_doubling_not_faster():
    """The first auth error is retried at once, then the backoff grows one step per error
    (it counted two per error, reaching its ceiling in a few failures)."""
    conn = connector(Pubsub(refresh_fails=False))
    for _ in range(3):
        conn._recover(expired())
    assert conn.backoff.attempt == 3
