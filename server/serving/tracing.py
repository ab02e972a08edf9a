"""OpenTelemetry tracing of inference requests (off by default).

``LOCKGATE_TRACING=otlp`` turns it on in every lockgate process: spans go to an OTLP/HTTP
collector through a batch processor, configured by OpenTelemetry's own variables
(``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``OTEL_TRACES_SAMPLER``
and ``OTEL_TRACES_SAMPLER_ARG``, e.g. ``parentbased_traceidratio`` and ``0.01``;
``OTEL_SERVICE_NAME``, default ``lockgate``). A client's W3C ``traceparent`` is the parent of the
request's span, and the answer carries the request span's own ``traceparent``.

A traced inference request is one SERVER span, ``lockgate <action> <model>``, with attributes
``lockgate.model``, ``lockgate.version``, ``lockgate.request_id``, ``lockgate.batch_rows``,
``http.response.status_code``, and children for what it waited on: ``lockgate.gate`` (the API
key and authorization checks), ``lockgate.queue`` (waiting for its batch), ``lockgate.batch``
(assembling the batch's inputs), ``lockgate.compute`` (onnxruntime, the batch's run, with
``lockgate.batch_size``), ``lockgate.encode`` (the answer) and ``lockgate.audit`` (the audit
record made durable). The queue, batch, compute and encode spans are placed from the times the
batcher measures for Triton's statistics, so tracing adds no clock reads to the batcher.

With tracing off (the default) nothing of this is imported, and a request pays one attribute test.
"""

from __future__ import annotations

import os
import time
from typing import Any

__all__ = ["RequestSpan", "enabled", "setup", "tracer"]

_tracer: Any = None
_configured = False


def enabled() -> bool:
    return os.environ.get("LOCKGATE_TRACING", "off").lower() in ("otlp", "1", "on")


_propagator: Any = None  # W3C trace context, made with the tracer


def setup(provider: Any = None) -> Any:
    """This process's tracer (None when tracing is off). ``provider``: a TracerProvider to use
    instead of the OTLP one (tests give one with an in-memory exporter)."""
    global _tracer, _configured, _propagator
    if _configured and provider is None:
        return _tracer
    _configured = True
    if provider is None:
        if not enabled():
            _tracer = None
            return None
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "lockgate")}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _propagator = TraceContextTextMapPropagator()
    _tracer = provider.get_tracer("lockgate")
    return _tracer


def tracer() -> Any:
    return _tracer


class RequestSpan:
    """The spans of one inference request (made only when tracing is on)."""

    __slots__ = ("_ctx", "span")

    def __init__(self, tracer_: Any, name: str, headers: Any, start_ns: int) -> None:
        from opentelemetry import trace

        carrier = {}
        for key, value in headers:
            if key == b"traceparent" or key == b"tracestate":
                carrier[key.decode()] = value.decode("latin-1")
        parent = _propagator.extract(carrier) if carrier else None
        self.span = tracer_.start_span(name, context=parent, kind=trace.SpanKind.SERVER, start_time=start_ns)
        self._ctx = trace.set_span_in_context(self.span)

    @property
    def recording(self) -> bool:
        return bool(self.span.is_recording())

    def child(self, name: str, start_ns: int, end_ns: int, **attributes: Any) -> None:
        if not self.span.is_recording():
            return
        span = _tracer.start_span(name, context=self._ctx, start_time=start_ns)
        for key, value in attributes.items():
            if value is not None:
                span.set_attribute(key, value)
        span.end(end_time=end_ns)

    def batch(self, timing: Any, answered_ns: int, rows: int) -> None:
        """The queue, batch, compute and encode spans, from the batcher's (queue, input, infer,
        output) nanoseconds, ending when the answer was encoded (``answered_ns``)."""
        queue, assemble, infer, encode = (int(t) for t in timing[:4])
        if not (queue or assemble or infer):
            return
        computed = answered_ns - encode
        started = computed - infer
        assembled = started - assemble
        self.child("lockgate.queue", assembled - queue, assembled)
        self.child("lockgate.batch", assembled, started)
        self.child("lockgate.compute", started, computed, **{"lockgate.batch_rows": rows})
        self.child("lockgate.encode", computed, answered_ns)

    def traceparent(self) -> bytes:
        c = self.span.get_span_context()
        return f"00-{c.trace_id:032x}-{c.span_id:016x}-{int(c.trace_flags):02x}".encode()

    def end(self, **attributes: Any) -> None:
        if self.span.is_recording():
            for key, value in attributes.items():
                if value is not None:
                    self.span.set_attribute(key, value)
        self.span.end(end_time=time.time_ns())
