import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import InMemoryTracing
import Logging
import NIOCore
import Systemd
import Testing
import Tracing

@testable import AiotaskServer

/// Issue 17, "Trace context": a client's span and the daemon's journal entries for its task share the trace id, and
/// the handler (a Swift one, a handler program) gets the traceparent.
@Suite("Trace propagation")
struct TracePropagationTests {
    static let example = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    /// The journal fields an entry becomes, by name.
    static func journalFields(of entry: LogCapture.Entry) -> [String: String] {
        let fields = JournalFields.fields(
            message: entry.message,
            level: entry.level,
            identifier: "aiotaskd",
            metadata: entry.metadata.mapValues { .string($0) },
            file: "",
            function: "",
            line: 0
        )
        return Dictionary(fields.map { ($0.name, $0.value) }, uniquingKeysWith: { first, _ in first })
    }

    @Test(
        "a submit inside a span: the daemon's entries carry TRACE_ID and SPAN_ID of the client span, and the Swift handler's context its traceparent"
    )
    func endToEnd() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1)
        let tracer = W3CTestTracer()
        try await withTimeout {
            let client = try await server.client()
            let (answer, callerTraceID) = try await withTracer(tracer) {
                try await tracer.withSpan("caller") { caller in
                    (try await client.submit("trace trace-marker-1"), caller.traceID)
                }
            }
            let span = try #require(tracer.submitSpans.first)
            #expect(span.traceID == callerTraceID)
            #expect(span.kind == .client)

            // The Swift handler's TaskContext.
            let seen = try TraceParent(parsing: String(decoding: answer, as: UTF8.self))
            #expect(seen.traceID == span.traceID)
            #expect(seen.spanID == span.spanID)

            // The daemon's entry for the task, as journal fields.
            let done = await server.logs.first { $0.message == "task done" && $0.metadata["trace_id"] != nil }
            let fields = Self.journalFields(of: done)
            #expect(fields["TRACE_ID"] == span.traceID)
            #expect(fields["SPAN_ID"] == span.spanID)
            #expect(fields["TASK_ID"] != nil)

            // A line the handler logs through its context's logger carries them too.
            let line = await server.logs.first { $0.message.contains("trace-marker-1") }
            #expect(line.message.contains("trace_id=\(span.traceID)"), "\(line.message)")

            // A failed task's warning as well.
            let failure = await withTracer(tracer) {
                await tracer.withSpan("caller") { _ in
                    await #expect(throws: TaskFailure.self) { _ = try await client.submit("fail on purpose") }
                }
            }
            #expect(failure?.reason == .handlerError)
            let failedSpan = try #require(tracer.submitSpans.last)
            let failed = await server.logs.first { $0.message.hasPrefix("task failed") }
            #expect(Self.journalFields(of: failed)["TRACE_ID"] == failedSpan.traceID)
            #expect(Self.journalFields(of: failed)["SPAN_ID"] == failedSpan.spanID)
            try await client.close()
        }
        try await server.stop()
    }

    @Test("a task without a trace context has no TRACE_ID, and its handler sees none")
    func untraced() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1)
        try await withTimeout {
            let client = try await server.client()
            let answer = try await client.submit("trace plain")
            #expect(answer == Array("none".utf8))
            let done = await server.logs.first { $0.message == "task done" }
            #expect(done.metadata["trace_id"] == nil)
            #expect(done.metadata["span_id"] == nil)
            try await client.close()
        }
        try await server.stop()
    }

    @Test("ReconnectingClient and AiotaskClientPool carry the caller's trace, and an explicit traceparent as given")
    func otherClients() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1)
        let tracer = W3CTestTracer()
        try await withTimeout {
            let reconnecting = ReconnectingClient(to: server.address)
            let pool = AiotaskClientPool(addresses: [server.address], logger: Logger(label: "test"))
            try await ClientPoolTests.running(pool) {
                let explicit = try TraceParent(parsing: Self.example)
                for submitter in [reconnecting as any TracedSubmitter, pool] {
                    let given = try await submitter.submit(ByteBuffer(string: "trace x"), traceParent: explicit)
                    #expect(String(buffer: given) == Self.example)
                    let (answer, traceID) = try await withTracer(tracer) {
                        try await tracer.withSpan("caller") { caller in
                            (
                                try await submitter.submit(ByteBuffer(string: "trace x"), traceParent: nil),
                                caller.traceID
                            )
                        }
                    }
                    let seen = try TraceParent(parsing: String(buffer: answer))
                    #expect(seen.traceID == traceID)
                    #expect(seen.spanID == tracer.submitSpans.last?.spanID)
                }
            }
            try await reconnecting.close()
        }
        try await server.stop()
    }

    @Test("aiotask submit --traceparent hands the handler that traceparent; an invalid one is refused, named, unsent")
    func commandLine() async throws {
        let daemon = try await RunningDaemon.start(arguments: ["--handler", "chaos", "--workers", "1"])
        try await daemon.stopAfter {
            let traced = try await runCLI(
                ["submit", "--server", daemon.server, "--traceparent", Self.example, "trace from the command line"]
            )
            #expect(traced.exit == .exited(0), "stderr: \(traced.standardError)")
            #expect(traced.standardOutput == Self.example)
            let bad = try await runCLI(
                ["submit", "--server", daemon.server, "--traceparent", "00-not-a-trace", "trace from the command line"]
            )
            #expect(bad.exit != .exited(0))
            #expect(bad.standardOutput.isEmpty)
            #expect(
                bad.standardError.contains("--traceparent: the traceparent is 14 characters long"),
                "\(bad.standardError)"
            )
        }
    }

    // MARK: The wire, byte by byte

    static let helloVersion2: [UInt8] = [0x80, 0, 0, 0, 5, 2, 0x04, 0, 0, 0]
    static let helloVersion3: [UInt8] = [0x80, 0, 0, 0, 5, 3, 0x04, 0, 0, 0]

    static func submit(_ id: TaskID, _ text: String) throws -> [UInt8] {
        var buffer = ByteBuffer()
        try buffer.writeFrame(.submit(id, timeout: nil, payload: ByteBuffer(string: text)))
        return Array(buffer.readableBytesView)
    }

    static func traceContext(_ id: TaskID, _ traceParent: String) throws -> [UInt8] {
        var buffer = ByteBuffer()
        try buffer.writeFrame(.traceContext(id, traceParent: traceParent, traceState: ""))
        return Array(buffer.readableBytesView)
    }

    @Test(
        "a version 2 client gets HELLO version 2 and its answers byte for byte as before; TRACE_CONTEXT from it is refused"
    )
    func versionTwoClient() async throws {
        let server = try await TestServer.start(handler: .builtin("echo"), workers: 1)
        try await withTimeout {
            let id = TaskID(high: 7, low: 7)
            try await RawConnection.with(server.address) { connection in
                try await connection.send(Self.helloVersion2 + (try Self.submit(id, "abc")))
                let hello = try #require(try await connection.readFrame())
                #expect(hello.type == 0x80)
                #expect(hello.payload == [2, 0x04, 0, 0, 0])
                let result = try #require(try await connection.readFrame())
                #expect(result.type == FrameType.result.rawValue)
                #expect(result.payload == knownBytes(id) + Array("abc".utf8))
                try await connection.send(try Self.traceContext(TaskID(high: 8, low: 8), Self.example))
                let frames = try await connection.readUntilClosed()
                #expect(frames.map(\.type) == [FrameType.error.rawValue])
                let message = String(decoding: frames.first?.payload ?? [], as: UTF8.self)
                #expect(message.contains("TRACE_CONTEXT needs protocol version 3"), "\(message)")
            }
            let warning = await server.logs.first { $0.message.contains("TRACE_CONTEXT needs protocol version 3") }
            #expect(warning.level == .warning)
            try await server.expectServing()
        }
        try await server.stop()
    }

    @Test("an invalid traceparent is ignored with a warning naming what is wrong; the task runs untraced")
    func invalidTraceParent() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1)
        try await withTimeout {
            let id = TaskID(high: 9, low: 9)
            let zero = "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
            try await RawConnection.with(server.address) { connection in
                try await connection.send(
                    Self.helloVersion3 + (try Self.traceContext(id, zero)) + (try Self.submit(id, "trace y"))
                )
                let hello = try #require(try await connection.readFrame())
                #expect(hello.payload.first == 3)
                let result = try #require(try await connection.readFrame())
                #expect(result.type == FrameType.result.rawValue)
                #expect(result.payload == knownBytes(id) + Array("none".utf8))
            }
            let warning = await server.logs.first { $0.message.hasPrefix("ignoring the trace context") }
            #expect(warning.message.contains("the traceparent has an all-zero trace id"), "\(warning.message)")
            #expect(warning.metadata["task_id"] == "\(id)")
            let done = await server.logs.first { $0.message == "task done" }
            #expect(done.metadata["trace_id"] == nil)
        }
        try await server.stop()
    }

    @Test("a TRACE_CONTEXT not followed by the SUBMIT of its id is a protocol violation")
    func misplaced() async throws {
        let server = try await TestServer.start(handler: .builtin("echo"), workers: 1)
        try await withTimeout {
            try await RawConnection.with(server.address) { connection in
                try await connection.send(
                    Self.helloVersion3 + (try Self.traceContext(TaskID(high: 1, low: 1), Self.example))
                        + (try Self.submit(TaskID(high: 2, low: 2), "other"))
                )
                let frames = try await connection.readUntilClosed()
                #expect(frames.map(\.type) == [0x80, FrameType.error.rawValue])
            }
            let warning = await server.logs.first { $0.message.contains("must come right before") }
            #expect(warning.level == .warning)
            try await server.expectServing()
        }
        try await server.stop()
    }

    @Test("with handler-task-context = 1 a handler program reads the documented header, the trace context in it")
    func handlerProgram() async throws {
        let script = try HandlerScript(
            """
            import os
            assert os.environ.get("AIOTASK_TASK_CONTEXT") == "1"
            while True:
                header = read_exactly(24)
                if header is None:
                    break
                word = struct.unpack(">Q", header[16:24])[0]
                seen = "none"
                if word >> 63:
                    trace = read_exactly(25)
                    seen = "00-%s-%s-%02x" % (trace[0:16].hex(), trace[16:24].hex(), trace[24])
                (length,) = struct.unpack(">I", read_exactly(4))
                task = read_exactly(length)
                reply(0, ("%s %s %d %s" % (header[0:16].hex(), seen, word & ~(1 << 63), task.decode())).encode())
            """
        )
        let server = try await TestServer.start(handler: script.command, workers: 1) {
            $0.handlerProgramTaskContext = true
        }
        try await withTimeout {
            let client = try await server.client()
            let explicit = try TraceParent(parsing: Self.example)
            let traced = String(
                buffer: try await client.submit(ByteBuffer(string: "t1"), timeout: .seconds(30), traceParent: explicit)
            )
            let parts = traced.split(separator: " ").map(String.init)
            try #require(parts.count == 4, "\(traced)")
            #expect(parts[1] == Self.example)
            #expect(parts[2] == "30000000000")
            #expect(parts[3] == "t1")
            let plain = String(buffer: try await client.submit(ByteBuffer(string: "t2")))
            #expect(plain.split(separator: " ").dropFirst().joined(separator: " ") == "none 0 t2")
            try await client.close()
        }
        try await server.stop()
    }
}

/// The submitters that take an explicit traceparent.
protocol TracedSubmitter: Sendable {
    func submit(_ payload: ByteBuffer, timeout: Duration?, traceParent: TraceParent?) async throws -> ByteBuffer
}

extension TracedSubmitter {
    func submit(_ payload: ByteBuffer, traceParent: TraceParent?) async throws -> ByteBuffer {
        try await submit(payload, timeout: nil, traceParent: traceParent)
    }
}

extension ReconnectingClient: TracedSubmitter {}
extension AiotaskClientPool: TracedSubmitter {}

/// The 16 bytes of `id` on the wire.
func knownBytes(_ id: TaskID) -> [UInt8] {
    var buffer = ByteBuffer()
    buffer.writeMultipleIntegers(id.high, id.low)
    return Array(buffer.readableBytesView)
}
