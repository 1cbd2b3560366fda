import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import InMemoryTracing
import NIOCore
import Testing
import Tracing

/// The client's side of trace propagation: the span around a submit, and the `TRACE_CONTEXT` it sends.
@Suite("Trace context, client side")
struct ClientTraceTests {
    /// The frames the client sent for its tasks: `TRACE_CONTEXT`s and `SUBMIT`s, in order.
    static func taskFrames(_ log: FrameLog) -> [Frame] {
        log.frames.filter {
            if case .traceContext = $0 { return true }
            if case .submit = $0 { return true }
            return false
        }
    }

    @Test("a submit inside a span runs in a client span whose traceparent leaves right before the task's SUBMIT")
    func spanAndFrame() async throws {
        let server = try await StubServer.start()
        let tracer = W3CTestTracer()
        try await withTimeout {
            let client = try await AiotaskClient.connect(to: server.address)
            let (traceID, callerSpanID) = try await withTracer(tracer) {
                try await tracer.withSpan("caller") { caller in
                    let answer = try await client.submit("traced")
                    #expect(answer == Array("traced".utf8))
                    return (caller.traceID, caller.spanID)
                }
            }
            let spans = tracer.submitSpans
            try #require(spans.count == 1)
            let span = spans[0]
            #expect(span.kind == .client)
            #expect(span.traceID == traceID)
            #expect(span.parentSpanID == callerSpanID)

            let frames = Self.taskFrames(server.log)
            try #require(frames.count == 2, "\(frames)")
            guard case .traceContext(let traceID, let text, let state) = frames[0],
                case .submit(let submitID, _, _) = frames[1]
            else {
                Issue.record("expected TRACE_CONTEXT then SUBMIT: \(frames)")
                return
            }
            #expect(traceID == submitID)
            let parent = try TraceParent(parsing: text)
            #expect(parent.traceID == span.traceID)
            #expect(parent.spanID == span.spanID)
            #expect(state == "aiotask=test")
            try await client.close()
        }
        await server.stop()
    }

    @Test("outside any span, and in a context with no tracer, the task leaves as a plain SUBMIT")
    func untraced() async throws {
        let server = try await StubServer.start()
        let tracer = W3CTestTracer()
        try await withTimeout {
            let client = try await AiotaskClient.connect(to: server.address)
            // A tracer, but no context: nothing to join.
            try await withTracer(tracer) {
                let answer = try await client.submit("plain")
                #expect(answer == Array("plain".utf8))
            }
            // A context, but no tracer (the NoOpTracer of an unbootstrapped process).
            try await ServiceContext.$current.withValue(.topLevel) {
                let answer = try await client.submit("plain")
                #expect(answer == Array("plain".utf8))
            }
            #expect(tracer.submitSpans.isEmpty)
            let frames = Self.taskFrames(server.log)
            #expect(frames.count == 2)
            #expect(frames.allSatisfy { $0.type == .submit }, "\(frames)")
            try await client.close()
        }
        await server.stop()
    }

    @Test("a server that negotiated version 2 is never sent TRACE_CONTEXT; the client span is still recorded")
    func versionTwoServer() async throws {
        let standard = StubBehaviors.standard()
        let server = try await StubServer.start { connection, frame in
            if case .hello = frame {
                connection.send(.hello(Hello(version: 2, maximumPayloadLength: 1 << 20)))
            } else {
                standard(connection, frame)
            }
        }
        let tracer = W3CTestTracer()
        try await withTimeout {
            let client = try await AiotaskClient.connect(to: server.address)
            #expect(client.serverProtocolVersion == 2)
            try await withTracer(tracer) {
                try await tracer.withSpan("caller") { _ in
                    let answer = try await client.submit("old server")
                    #expect(answer == Array("old server".utf8))
                }
            }
            let explicit = TraceParent(traceIDHigh: 1, traceIDLow: 2, parentID: 3)
            #expect(try await client.submit(ByteBuffer(string: "x"), traceParent: explicit) == ByteBuffer(string: "x"))
            #expect(tracer.submitSpans.count == 1)
            #expect(Self.taskFrames(server.log).allSatisfy { $0.type == .submit })
            #expect(!server.log.frames.contains { $0.type == .traceContext })
            try await client.close()
        }
        await server.stop()
    }

    @Test("an explicit traceparent travels as given, with no span started")
    func explicitTraceParent() async throws {
        let server = try await StubServer.start()
        let tracer = W3CTestTracer()
        try await withTimeout {
            let client = try await AiotaskClient.connect(to: server.address)
            let explicit = try TraceParent(parsing: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            try await withTracer(tracer) {
                try await tracer.withSpan("caller") { _ in
                    _ = try await client.submit(ByteBuffer(string: "x"), traceParent: explicit)
                }
            }
            #expect(tracer.submitSpans.isEmpty)
            let frames = Self.taskFrames(server.log)
            try #require(frames.count == 2)
            guard case .submit(let id, _, _) = frames[1] else {
                Issue.record("expected TRACE_CONTEXT then SUBMIT: \(frames)")
                return
            }
            #expect(frames[0] == .traceContext(id, traceParent: "\(explicit)", traceState: ""))
            try await client.close()
        }
        await server.stop()
    }
}
