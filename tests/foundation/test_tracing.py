"""Tracing: the Order's span while several of its events are open, and headers that are not
UTF-8 (both found by the observability review)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from common import tracing


@pytest.fixture
def tracer(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(tracing, "_tracer", TracerProvider().get_tracer("test"))
    yield


def _parent(trace_id: str) -> list[tuple[str, bytes]]:
    return [(tracing.TRACEPARENT, f"00-{trace_id}-{'1' * 16}-01".encode())]


def _trace_of(headers: list[tuple[str, bytes]]) -> str:
    [(_, value)] = headers
    return value.decode().split("-")[1]


def test_an_orders_outcome_carries_the_trace_of_its_oldest_open_event(tracer: None) -> None:
    """A redelivery of an Order taken while its first event still runs in the Order's lane
    must not take the first event's outcome (and WHMCS calls) into its own trace."""
    first, second = "a" * 32, "b" * 32
    spans = tracing.OpenSpans()
    spans.start((0, 1), "worker.event", headers=_parent(first), order_id="801A")
    spans.start((0, 2), "worker.event", headers=_parent(second), order_id="801A")
    assert _trace_of(tracing.headers_of(spans.of_order("801A"))) == first
    assert [_trace_of(tracing.headers_of(s)) for s in spans.of_orders(["801A"])] == [first]
    spans.finish((0, 1))
    assert _trace_of(tracing.headers_of(spans.of_order("801A"))) == second
    spans.finish((0, 2))
    assert spans.of_order("801A") is None and spans._by_order == {}


def test_finishing_a_later_event_first_keeps_the_older_one(tracer: None) -> None:
    spans = tracing.OpenSpans()
    spans.start((0, 1), "worker.event", headers=_parent("c" * 32), order_id="801A")
    spans.start((0, 2), "worker.event", headers=_parent("d" * 32), order_id="801A")
    spans.finish((0, 2))
    assert _trace_of(tracing.headers_of(spans.of_order("801A"))) == "c" * 32


@pytest.mark.parametrize("value", [b"\xff\xfe", b"00-\xc3(-x-01"])
def test_a_traceparent_that_is_not_utf8_starts_a_new_trace(tracer: None, value: bytes) -> None:
    """Another producer's bytes must not fail the record: the sink crash-looped on it."""
    span = tracing.OpenSpans().start((0, 1), "sink.write_back",
                                     headers=[(tracing.TRACEPARENT, value)], order_id="801A")
    assert span is not None and span.get_span_context().is_valid


def test_a_dead_letters_span_is_not_its_orders(tracer: None) -> None:
    """A dead letter runs outside its Order's lane: while its send retried, the Order's next
    event (run meanwhile) had its calls and outcome put in the dead letter's trace."""
    spans = tracing.OpenSpans()
    spans.start((0, 1), "worker.event", headers=_parent("e" * 32), order_id="801A",
                by_order=False)
    spans.start((0, 2), "worker.event", headers=_parent("f" * 32), order_id="801A")
    assert _trace_of(tracing.headers_of(spans.of_order("801A"))) == "f" * 32
    spans.finish((0, 1))
    spans.finish((0, 2))
    assert spans._by_key == {} and spans._by_order == {}
