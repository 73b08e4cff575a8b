"""Optional OpenTelemetry tracing: one trace per Order across connector → worker → sink.

Off by default (``SFPROV_TRACING=OFF``): every function here is then a cheap no-op and
OpenTelemetry is not even imported. With ``CONSOLE``, ``FILE`` or ``OTLP`` each process
(:func:`setup`) names itself as the ``service.name`` and:

* the connector starts a root span per event (``connector.event``) and writes its W3C
  ``traceparent`` into the request record's Kafka headers;
* the worker continues it (``worker.event``, from the request's header) and writes its own
  ``traceparent`` into the outcome record's headers; its Salesforce guard query and WHMCS
  calls are child spans (``salesforce.query``, ``whmcs.AddOrder`` …);
* the sink continues it (``sink.write_back``) with the Salesforce write as a child span.

Every span carries ``sfprov.order_id`` and, where known, ``sfprov.correlation_id``
(``CorrelationId__c``). A call made once for many Orders (one SOQL query or one sObject
Collections call for a batch) appears as one child span in each Order's trace, with the
call's real start and end.

Spans are kept in :class:`OpenSpans` between "taken" and "finished", keyed like the caller
keys its events. :func:`set_current_order` binds an Order to the running asyncio task so a
client callback (``WhmcsClient.observer``) knows whose call it timed.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Hashable, Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
TRACEPARENT = "traceparent"
_tracer: Any = None
_current_order: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "sfprov_current_order", default=None)


def enabled() -> bool:
    return _tracer is not None


def setup(process: str, mode: str = "OFF", *, file: str | Path = "",
          otlp_endpoint: str = "", state_dir: Path | None = None) -> bool:
    """Configure the tracer for this process; False (and nothing imported) when OFF."""
    global _tracer
    if mode.upper() == "OFF":
        _tracer = None
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    provider = TracerProvider(resource=Resource.create({"service.name": process}))
    exporter: Any
    if mode.upper() == "OTLP":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    else:
        if mode.upper() == "FILE":
            path = Path(file) if file else (state_dir or Path(".state")) / "traces" / \
                f"{process}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            out = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
            exporter = ConsoleSpanExporter(out=out, formatter=_one_line)
        else:
            exporter = ConsoleSpanExporter()
        # written as each span ends: a killed process loses nothing already finished
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    _tracer = provider.get_tracer("sfprov")
    log.info("tracing on (%s)", mode.upper())
    return True


def _one_line(span: Any) -> str:
    import json

    return json.dumps(json.loads(span.to_json())) + "\n"


def _attrs(order_id: str | None, correlation_id: str | None = None,
           **extra: Any) -> dict[str, Any]:
    out = {f"sfprov.{k}": v for k, v in extra.items() if v is not None}
    if order_id:
        out["sfprov.order_id"] = order_id
    if correlation_id:
        out["sfprov.correlation_id"] = correlation_id
    return out


def _parent(headers: Any) -> Any:
    """The context carried by a record's ``traceparent`` header (list of pairs or dict)."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    pairs = headers.items() if isinstance(headers, dict) else (headers or [])
    # not UTF-8 (another producer's bytes): a malformed header, ignored as the propagator
    # ignores one — tracing never fails a record (a strict decode crash-looped the sink)
    carrier = {k: (v.decode(errors="replace") if isinstance(v, bytes) else str(v))
               for k, v in pairs if k == TRACEPARENT and v}
    return TraceContextTextMapPropagator().extract(carrier) if carrier else None


def headers_of(span: Any) -> list[tuple[str, bytes]]:
    """``[("traceparent", b"00-…")]`` for a record caused by ``span`` (empty when off)."""
    if span is None or _tracer is None:
        return []
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, trace.set_span_in_context(span))
    return [(k, v.encode()) for k, v in carrier.items()]


def start_span(name: str, *, headers: Any = None, order_id: str | None = None,
               correlation_id: str | None = None, start_time: float | None = None,
               **attrs: Any) -> Any:
    """A span continuing the trace in ``headers`` (a new trace without one); None when off."""
    if _tracer is None:
        return None
    return _tracer.start_span(name, context=_parent(headers),
                              attributes=_attrs(order_id, correlation_id, **attrs),
                              start_time=_ns(start_time) if start_time else None)


def end_span(span: Any, **attrs: Any) -> None:
    if span is None:
        return
    for key, value in attrs.items():
        if value is not None:
            span.set_attribute(f"sfprov.{key}", value)
    span.end()


def call_span(name: str, parents: Iterable[Any], seconds: float, **attrs: Any) -> None:
    """A call that just took ``seconds``, as a child span of each parent (one per Order)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    end = time.time()
    for parent in parents:
        if parent is None:
            continue
        order_id = parent.attributes.get("sfprov.order_id") if hasattr(parent, "attributes") \
            else None
        span = _tracer.start_span(name, context=trace.set_span_in_context(parent),
                                  attributes=_attrs(order_id, **attrs),
                                  start_time=_ns(end - seconds))
        span.end(end_time=_ns(end))


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def set_current_order(order_id: str | None) -> None:
    """Bind ``order_id`` to the running task (each asyncio task has its own copy)."""
    if _tracer is not None:
        _current_order.set(order_id)


def current_order() -> str | None:
    return _current_order.get()


class OpenSpans:
    """Spans between an event's start and finish, by the caller's key and by Order.

    An Order may have several events open at once (a redelivery, a re-request taken while
    the first still waits in the Order's lane): its spans are kept in the order they
    started, and the Order's span is the oldest one still open — the event its lane runs,
    since a lane runs an Order's events one at a time in that order. (Keeping only the
    latest gave the first event's outcome and WHMCS calls to the second event's trace.)"""

    def __init__(self) -> None:
        self._by_key: dict[Hashable, Any] = {}
        self._by_order: dict[str, list[Any]] = {}

    def start(self, key: Hashable, name: str, *, headers: Any = None, order_id: str | None,
              correlation_id: str | None = None, by_order: bool = True, **attrs: Any) -> Any:
        """A span for ``key``, found by :meth:`of_order` too unless ``by_order`` is False."""
        if _tracer is None:
            return None
        span = start_span(name, headers=headers, order_id=order_id,
                          correlation_id=correlation_id, **attrs)
        self._by_key[key] = span
        if order_id and by_order:
            self._by_order.setdefault(order_id, []).append(span)
        return span

    def finish(self, key: Hashable, **attrs: Any) -> None:
        span = self._by_key.pop(key, None)
        if span is None:
            return
        order_id = span.attributes.get("sfprov.order_id")
        spans = self._by_order.get(order_id) if order_id else None
        if spans is not None:
            spans[:] = [s for s in spans if s is not span]
            if not spans:
                del self._by_order[order_id]
        end_span(span, **attrs)

    def of_order(self, order_id: str | None) -> Any:
        spans = self._by_order.get(order_id) if order_id else None
        return spans[0] if spans else None

    def open_keys(self) -> list[Hashable]:
        """The keys of the spans still open."""
        return list(self._by_key)

    def of_orders(self, order_ids: Iterable[str]) -> list[Any]:
        return [s for s in (self.of_order(o) for o in order_ids) if s is not None]
