import InMemoryTracing
import Tracing

/// swift-distributed-tracing's `InMemoryTracer`, made to speak W3C Trace Context: its ids are random hex of the W3C
/// sizes, and it injects a `traceparent` (the in-memory tracer itself injects ids under keys of its own). Bound for
/// a test's scope with `withTracer`, so that no process-global bootstrap is needed.
struct W3CTestTracer: Tracer {
    let recorder = InMemoryTracer(
        idGenerator: .init(
            nextTraceID: { W3CTestTracer.hex(digits: 32) },
            nextSpanID: { W3CTestTracer.hex(digits: 16) }
        )
    )

    static func hex(digits: Int) -> String {
        String((0..<digits).map { _ in "0123456789abcdef".randomElement()! })
    }

    func startSpan<Instant: TracerInstant>(
        _ operationName: String,
        context: @autoclosure () -> ServiceContext,
        ofKind kind: SpanKind,
        at instant: @autoclosure () -> Instant,
        function: String,
        file fileID: String,
        line: UInt
    ) -> InMemorySpan {
        recorder.startSpan(
            operationName,
            context: context(),
            ofKind: kind,
            at: instant(),
            function: function,
            file: fileID,
            line: line
        )
    }

    func activeSpan(identifiedBy context: ServiceContext) -> InMemorySpan? {
        recorder.activeSpan(identifiedBy: context)
    }

    func forceFlush() {
        recorder.forceFlush()
    }

    func inject<Carrier, Inject: Injector>(
        _ context: ServiceContext,
        into carrier: inout Carrier,
        using injector: Inject
    ) where Inject.Carrier == Carrier {
        guard let span = context.inMemorySpanContext else { return }
        injector.inject("00-\(span.traceID)-\(span.spanID)-01", forKey: "traceparent", into: &carrier)
        injector.inject("aiotask=test", forKey: "tracestate", into: &carrier)
    }

    func extract<Carrier, Extract: Extractor>(
        _ carrier: Carrier,
        into context: inout ServiceContext,
        using extractor: Extract
    ) where Extract.Carrier == Carrier {}

    /// The client spans finished so far.
    var submitSpans: [FinishedInMemorySpan] {
        recorder.finishedSpans.filter { $0.operationName == "aiotask.submit" }
    }
}
