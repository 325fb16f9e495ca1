// Traces of one worker: OpenTelemetry spans at the edge, the upstream session actor and the
// upstream request, linked by W3C trace context (HTTP headers from the client and to the
// upstream, NATS message headers between workers). Nothing is registered globally (several
// workers share a process in tests): the provider is this worker's and context is passed
// explicitly. Spans are exported over OTLP/HTTP only when an endpoint is configured;
// without one the trace context still propagates and trace ids still reach the logs.
import { defaultTextMapGetter, ROOT_CONTEXT, SpanStatusCode, trace, TraceFlags, type Attributes, type Span, type SpanKind, type Tracer } from "@opentelemetry/api";
import { parseTraceParent, TraceState, W3CTraceContextPropagator } from "@opentelemetry/core";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { BasicTracerProvider, BatchSpanProcessor, RandomIdGenerator } from "@opentelemetry/sdk-trace-base";
import type { MsgHdrs } from "@nats-io/transport-node";
import { TRACE_CONTEXT_HEADERS } from "../protocol/upstream.ts";

/** W3C trace context headers (`traceparent`, `tracestate`) by lower-case name. */
export type TraceHeaders = Record<string, string>;

export type Tracing = {
  /** a span whose parent is `parent` (a span, or the trace context in headers), else the root of a new trace */
  startSpan(name: string, opts: { kind: SpanKind; parent?: Span | TraceHeaders; attributes?: Attributes }): Span;
  /** whether spans leave the process */
  exporting: boolean;
  /** exports what is still buffered */
  shutdown(): Promise<void>;
};

const propagator = new W3CTraceContextPropagator();

export function createTracing(opts: { otlpEndpoint?: string | undefined; workerId: string }): Tracing {
  const endpoint = opts.otlpEndpoint?.replace(/\/+$/, "");
  const parentContext = (parent: Span | TraceHeaders | undefined) =>
    parent === undefined ? ROOT_CONTEXT : isSpan(parent) ? trace.setSpan(ROOT_CONTEXT, parent) : propagator.extract(ROOT_CONTEXT, parent, defaultTextMapGetter);
  if (endpoint === undefined) return contextOnlyTracing();
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ "service.name": "mcpgw", "service.instance.id": opts.workerId }),
    spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter({ url: `${endpoint}/v1/traces` }))],
  });
  const tracer: Tracer = provider.getTracer("mcpgw");
  return {
    startSpan: (name, { kind, parent, attributes }) => tracer.startSpan(name, { kind, attributes }, parentContext(parent)),
    exporting: true,
    shutdown: () => provider.shutdown(),
  };
}

/**
 * Without an exporter a span is only its context: the trace id (for the logs and the next hop,
 * the parent's when there is one) and a span id of its own. A recording span would be built,
 * timed and dropped on every call for nothing (about half of a call's instrumentation).
 */
function contextOnlyTracing(): Tracing {
  const ids = new RandomIdGenerator();
  return {
    startSpan(_name, { parent }) {
      // the parent's context read directly: no OpenTelemetry context objects per span
      const p = parent === undefined ? undefined : isSpan(parent) ? parent.spanContext() : spanContextOfHeaders(parent);
      const valid = p !== undefined && trace.isSpanContextValid(p);
      return trace.wrapSpanContext({
        traceId: valid ? p.traceId : ids.generateTraceId(),
        spanId: ids.generateSpanId(),
        // the parent's sampling decision, else sampled (the provider's default sampler, parent-based always-on)
        traceFlags: valid ? p.traceFlags : TraceFlags.SAMPLED,
        ...(valid && p.traceState ? { traceState: p.traceState } : {}),
      });
    },
    exporting: false,
    shutdown: async () => {},
  };
}

/** The remote span context in W3C trace context headers, as the propagator reads it (a malformed `traceparent` is none). */
function spanContextOfHeaders(h: TraceHeaders): ReturnType<Span["spanContext"]> | undefined {
  const parent = h.traceparent;
  const sc = parent === undefined ? null : parseTraceParent(parent);
  if (!sc) return undefined;
  sc.isRemote = true;
  if (h.tracestate) sc.traceState = new TraceState(h.tracestate);
  return sc;
}

/** The trace context of `span` as headers for the next hop (what the W3C propagator writes, without a context per call). */
export function traceHeadersOf(span: Span): TraceHeaders {
  const sc = span.spanContext();
  if (!trace.isSpanContextValid(sc)) return {};
  const out: TraceHeaders = { traceparent: `00-${sc.traceId}-${sc.spanId}-0${Number(sc.traceFlags || TraceFlags.NONE).toString(16)}` };
  const state = sc.traceState?.serialize();
  if (state) out.tracestate = state;
  return out;
}

export function traceIdOf(span: Span): string {
  return span.spanContext().traceId;
}

/** Ends a span, failed when `error` says why. */
export function endSpan(span: Span, error?: string): void {
  if (error !== undefined) span.setStatus({ code: SpanStatusCode.ERROR, message: error });
  span.end();
}

/** The trace context headers a NATS message carries. */
export function natsTraceHeaders(h: MsgHdrs | undefined): TraceHeaders {
  const out: TraceHeaders = {};
  for (const name of TRACE_CONTEXT_HEADERS) {
    const v = h?.get(name);
    if (v) out[name] = v;
  }
  return out;
}

const isSpan = (p: Span | TraceHeaders): p is Span => typeof (p as Span).spanContext === "function";
