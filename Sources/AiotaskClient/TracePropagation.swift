import AiotaskProtocol
import Tracing

/// The trace context a task leaves with: a W3C `traceparent`, and the `tracestate` beside it (empty for none).
struct OutboundTrace: Sendable {
    var parent: TraceParent
    var state: String
}

/// How a submit joins the caller's trace (docs/protocol.md, `TRACE_CONTEXT`).
///
/// A submit made where `ServiceContext.current` is set, with a tracer in use (bootstrapped with
/// `InstrumentationSystem.bootstrap`, or bound for a scope with `withTracer`), runs inside a client span
/// `aiotask.submit`; the span's context is injected through `InstrumentationSystem.instrument` with W3C header names
/// (`traceparent`, `tracestate`), so any tracer or propagator that speaks W3C Trace Context is carried to the
/// daemon. Off — no context, or no tracer — it costs one task-local read: no span, no allocation, no byte on the wire.
enum TracePropagation {
    /// The name of the client span around a submit.
    static let spanName = "aiotask.submit"
    /// The longest `tracestate` sent, in bytes.
    static let maximumTraceStateLength = 512

    /// Runs `body` with the trace context the task leaves with: `explicit` when given (no span is started), else
    /// that of a client span started in the caller's context, else none.
    static func submit<Result>(
        explicit: TraceParent?,
        _ body: (OutboundTrace?) async throws -> Result
    ) async throws -> Result {
        if let explicit { return try await body(OutboundTrace(parent: explicit, state: "")) }
        // The cheap test first: outside any service context, a submit is not traced.
        guard let context = ServiceContext.current else { return try await body(nil) }
        let tracer = InstrumentationSystem.tracer
        if tracer is NoOpTracer { return try await body(nil) }
        return try await traced(with: tracer, in: context, body)
    }

    private static func traced<Result>(
        with tracer: some Tracer,
        in context: ServiceContext,
        _ body: (OutboundTrace?) async throws -> Result
    ) async throws -> Result {
        try await tracer.withSpan(spanName, context: context, ofKind: .client) { span in
            span.attributes["rpc.system"] = "aiotask"
            var headers = TraceHeaders()
            InstrumentationSystem.instrument.inject(span.context, into: &headers, using: TraceHeaderInjector())
            // A tracer that does not speak W3C Trace Context (or writes an invalid traceparent) still gets its span;
            // the daemon just learns nothing of it.
            let parent = headers.traceParent.flatMap { try? TraceParent(parsing: $0) }
            // W3C asks a receiver to take at least 512 characters of tracestate; a longer one is dropped rather than
            // risk the 64 KiB control-frame limit.
            let state = headers.traceState.flatMap { $0.utf8.count <= maximumTraceStateLength ? $0 : nil } ?? ""
            return try await body(parent.map { OutboundTrace(parent: $0, state: state) })
        }
    }
}

/// The W3C Trace Context headers an instrument injects.
struct TraceHeaders: Sendable {
    var traceParent: String?
    var traceState: String?
}

/// Writes the W3C headers an instrument injects into ``TraceHeaders``, and drops the others.
struct TraceHeaderInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout TraceHeaders) {
        // Header names are case-insensitive; instruments write them in lower case, as W3C does.
        switch key.lowercased() {
        case "traceparent": carrier.traceParent = value
        case "tracestate": carrier.traceState = value
        default: break
        }
    }
}
