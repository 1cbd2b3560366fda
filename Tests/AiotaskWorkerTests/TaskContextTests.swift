import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import Logging
import NIOCore
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

@Suite("The context a Swift handler gets with each task")
struct TaskContextTests {
    /// The answer of the chaos command `context`: the task's id and the milliseconds left to its deadline.
    private static func context(in answer: [UInt8]) throws -> (id: TaskID?, millisecondsLeft: Int?) {
        let parts = String(decoding: answer, as: UTF8.self).split(separator: " ").map(String.init)
        try #require(parts.count == 2, "answer: \(parts)")
        return (TaskID(parts[0]), Int(parts[1]))
    }

    @Test("each task's context carries the id its client chose, tasks sent ahead too")
    func idOfEachTask() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1)
        try await withTimeout {
            let client = try await server.client()
            // Twenty at once on one process: all but the first are sent ahead behind the one it runs.
            let handles = try await withThrowingTaskGroup(of: TaskHandle.self) { group in
                for index in 0..<20 {
                    group.addTask { try await client.enqueue(ByteBuffer(string: "context \(index)")) }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            for handle in handles {
                let answer = try await handle.result()
                #expect(try Self.context(in: Array(answer.readableBytesView)).id == handle.id)
            }
            try await client.close()
        }
        try await server.stop()
    }

    @Test("the deadline is the task's start plus the client's timeout, else the server's task-timeout, else none")
    func deadline() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1) {
            $0.defaultTaskTimeout = .seconds(400)
        }
        try await withTimeout {
            let client = try await server.client()
            let own = try Self.context(in: try await client.submit("context own", timeout: .seconds(200)))
            let left = try #require(own.millisecondsLeft)
            // Read as the handler starts: no more than the timeout, and less only by how long the start took.
            #expect(left <= 200_000)
            #expect(left > 200_000 - 10_000 * testSlowdown)
            let serverDefault = try Self.context(in: try await client.submit("context default"))
            let defaultLeft = try #require(serverDefault.millisecondsLeft)
            #expect(defaultLeft <= 400_000)
            #expect(defaultLeft > 400_000 - 10_000 * testSlowdown)
            try await client.close()
        }
        try await server.stop()

        let unlimited = try await TestServer.start(handler: .builtin("chaos"), workers: 1)
        try await withTimeout {
            let client = try await unlimited.client()
            let answer = String(decoding: try await client.submit("context none"), as: UTF8.self)
            #expect(answer.hasSuffix(" none"))
            try await client.close()
        }
        try await unlimited.stop()
    }

    @Test("a line logged through the context's logger reaches the daemon's log with the task id and the process's pid")
    func loggerReachesDaemonLog() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1)
        try await withTimeout {
            let client = try await server.client()
            let pid = try await client.workerPID()
            let handle = try await client.enqueue(ByteBuffer(string: "context context-log-marker"))
            _ = try await handle.result()
            let entry = await server.logs.first { $0.message.contains("context-log-marker") }
            #expect(entry.message == "info task_id=\(handle.id): context-log-marker")
            #expect(TestServer.workerPID(of: entry) == pid)
            try await client.close()
        }
        try await server.stop()
    }

    @Test("a handler program gets no context: its framing is the documented one")
    func handlerProgramGetsNone() async throws {
        let script = try HandlerScript(
            """
            while True:
                header = read_exactly(4)
                if header is None:
                    break
                (length,) = struct.unpack(">I", header)
                reply(0, read_exactly(length))
            """
        )
        let server = try await TestServer.start(handler: .program(script.path), workers: 1)
        try await withTimeout {
            let client = try await server.client()
            #expect(try await client.submit("plain", timeout: .seconds(30)) == Array("plain".utf8))
            try await client.close()
        }
        try await server.stop()
    }
}

@Suite("The task context on the link to a pool process")
struct TaskContextFramingTests {
    private static let id = TaskID(high: 0x0123_4567_89ab_cdef, low: 0xfedc_ba98_7654_3210)

    @Test("a header and its task decode together, whatever the reads that bring them, inline and in the arena")
    func roundTrip() throws {
        var stream = ByteBuffer()
        stream.writeTaskContextHeader(TaskContextHeader(id: Self.id, timeout: .milliseconds(1500)))
        stream.writeInlineRequestHeader(length: 5)
        stream.writeString("hello")
        stream.writeTaskContextHeader(TaskContextHeader(id: TaskID(high: 1, low: 2), timeout: nil))
        stream.writeSharedRequest(offset: 4096, length: 70_000)
        var decoder = ContextualPoolRequestDecoder(
            PoolRequestDecoder(maximumLength: 1 << 20, hasKinds: true),
            hasContext: true
        )
        var buffer = ByteBuffer()
        var decoded: [ContextualPoolRequestDecoder.Decoded] = []
        for byte in stream.readableBytesView {
            buffer.writeInteger(byte)
            if let length = decoder.frameLength(at: buffer) { #expect(length >= buffer.readableBytes) }
            while let next = try decoder.decode(buffer: &buffer) { decoded.append(next) }
        }
        #expect(buffer.readableBytes == 0)
        try #require(decoded.count == 2)
        #expect(decoded[0].context == TaskContextHeader(id: Self.id, timeout: .milliseconds(1500)))
        #expect(decoded[0].request == .inline(ByteBuffer(string: "hello")))
        #expect(decoded[1].context == TaskContextHeader(id: TaskID(high: 1, low: 2), timeout: nil))
        #expect(decoded[1].request == .shared(offset: 4096, length: 70_000))
    }

    @Test("the length of a request counts its header once the request's own header is there")
    func frameLength() {
        var buffer = ByteBuffer()
        buffer.writeTaskContextHeader(TaskContextHeader(id: Self.id, timeout: nil))
        let decoder = ContextualPoolRequestDecoder(
            PoolRequestDecoder(maximumLength: 1 << 20, hasKinds: false),
            hasContext: true
        )
        #expect(decoder.frameLength(at: buffer) == nil)
        buffer.writeInteger(UInt32(100))
        #expect(decoder.frameLength(at: buffer) == TaskContextHeader.length + 4 + 100)
    }

    @Test("a stream that ends inside a header or its task is truncated")
    func truncated() throws {
        var buffer = ByteBuffer()
        buffer.writeTaskContextHeader(TaskContextHeader(id: Self.id, timeout: nil))
        buffer.writeInteger(UInt32(10))
        buffer.writeString("short")
        var decoder = ContextualPoolRequestDecoder(
            PoolRequestDecoder(maximumLength: 1 << 20, hasKinds: false),
            hasContext: true
        )
        #expect(try decoder.decode(buffer: &buffer) == nil)
        #expect(throws: HandlerFramingError.truncated(bytesLeft: TaskContextHeader.length + 9)) {
            try decoder.decodeLast(buffer: &buffer, seenEOF: true)
        }
    }

    @Test("a timeout travels in nanoseconds: 0 is none, any timeout at least 1, one too long for 64 bits the largest")
    func encodedTimeout() {
        #expect(TaskContextHeader(id: Self.id, timeout: nil).encodedTimeout == 0)
        #expect(TaskContextHeader(id: Self.id, timeout: .seconds(3)).encodedTimeout == 3_000_000_000)
        #expect(TaskContextHeader(id: Self.id, timeout: .zero).encodedTimeout == 1)
        #expect(
            TaskContextHeader(id: Self.id, timeout: .seconds(Int64.max)).encodedTimeout
                == TaskContextHeader.longestEncodedTimeout
        )
        #expect(TaskContextHeader(id: Self.id, encodedTimeout: 0).timeout == nil)
        #expect(TaskContextHeader(id: Self.id, encodedTimeout: 2_500_000).timeout == .milliseconds(2.5))
    }

    @Test("a pool process's log line carries the level and the metadata on every line of the message")
    func logLineFormat() {
        let text = PoolProcessLogHandler.format(
            level: .warning,
            message: "first\nsecond",
            metadata: ["task_id": "abc", "attempt": "2"]
        )
        #expect(text == "warning attempt=2 task_id=abc: first\nwarning attempt=2 task_id=abc: second")
    }

    @Test("a context's deadline is its start plus the timeout its header carries, and its logger names the task")
    func contextFromHeader() {
        let start = ContinuousClock.now
        let context = TaskContext(header: TaskContextHeader(id: Self.id, timeout: .seconds(5)), startedAt: start)
        #expect(context.id == Self.id)
        #expect(context.deadline == start + .seconds(5))
        #expect(context.logger[metadataKey: "task_id"] == "\(Self.id)")
        #expect(TaskContext(header: TaskContextHeader(id: Self.id, timeout: nil)).deadline == nil)
    }
}
