import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Logging
import NIOCore
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

/// Bad input ends the offending connection (with an ERROR frame if it said HELLO), is logged, and harms no other
/// connection; an oversized task is refused without ending its connection.
@Suite("Bad input")
struct BadInputTests {
    static let hello: [UInt8] = [0x80, 0, 0, 0, 5, 1, 0x04, 0, 0, 0]
    static let serverHello: UInt8 = 0x80
    static let resultType: UInt8 = 0x82
    static let failedType: UInt8 = 0x83
    static let errorType: UInt8 = 0x87

    @Test("garbage bytes close their connection and are logged, while another connection's task carries on")
    func garbage() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 2)
        try await withTimeout {
            let bystander = try await server.client()
            let running = try await bystander.enqueue(ByteBuffer(string: "sleep 300"))
            try await RawConnection.with(server.address) { connection in
                try await connection.send([0x00, 0xde, 0xad, 0xbe, 0xef, 0x42, 0x42])
                #expect(try await connection.readUntilClosed().isEmpty)
            }
            let warning = await server.logs.first { $0.message.contains("protocol violation") }
            #expect(warning.level == .warning)
            #expect(warning.message.contains("unknown frame type 0"))
            #expect(try await running.result() == ByteBuffer(string: "slept 300"))
            #expect(try await bystander.submit("echo still here") == Array("still here".utf8))
            try await bystander.close()
            try await server.expectServing("echo fresh", answer: "fresh")
        }
        try await server.stop()
    }

    @Test(
        "an unknown type byte closes the connection; after HELLO an ERROR frame comes first",
        arguments: [false, true]
    )
    func unknownType(extended: Bool) async throws {
        let server = try await TestServer.start()
        try await withTimeout {
            try await RawConnection.with(server.address) { connection in
                try await connection.send((extended ? Self.hello : []) + [0x05, 0x00, 0x00])
                let frames = try await connection.readUntilClosed()
                if extended {
                    try #require(frames.count == 2)
                    #expect(frames[0].type == Self.serverHello)
                    #expect(frames[1].type == Self.errorType)
                    #expect(String(decoding: frames[1].payload, as: UTF8.self).contains("unknown frame type 5"))
                } else {
                    #expect(frames.isEmpty)
                }
            }
            let warning = await server.logs.first { $0.message.contains("protocol violation") }
            #expect(warning.message.contains("unknown frame type 5"))
            try await server.expectServing()
        }
        try await server.stop()
    }

    @Test("an unknown extension type byte closes the connection at once")
    func unknownExtensionType() async throws {
        let server = try await TestServer.start()
        try await withTimeout {
            try await RawConnection.with(server.address) { connection in
                // Only the type byte: the server must not wait for a length to know it is bad.
                try await connection.send(Self.hello + [0x8D])
                let frames = try await connection.readUntilClosed()
                #expect(frames.map(\.type) == [Self.serverHello, Self.errorType])
            }
            try await server.expectServing()
        }
        try await server.stop()
    }

    @Test("a control frame longer than 64 KiB closes the connection without its payload being awaited")
    func controlFrameOverLimit() async throws {
        let server = try await TestServer.start()
        try await withTimeout(.seconds(10)) {
            try await RawConnection.with(server.address) { connection in
                // INFO_REQUEST announcing 1 MiB; the payload is never sent, so only a check on the header ends this.
                try await connection.send(Self.hello + [0x85, 0x00, 0x10, 0x00, 0x00])
                let frames = try await connection.readUntilClosed()
                try #require(frames.count == 2)
                #expect(frames[0].type == Self.serverHello)
                #expect(frames[1].type == Self.errorType)
                #expect(String(decoding: frames[1].payload, as: UTF8.self).contains("exceeds the limit"))
            }
            let warning = await server.logs.first { $0.message.contains("protocol violation") }
            #expect(warning.message.contains("INFO_REQUEST frame of 1048576 bytes"))
            try await server.expectServing()
        }
        try await server.stop()
    }

    @Test(
        "a stream that ends inside a frame is logged and closed",
        arguments: [
            // ENQUEUE announcing 100 bytes, 20 sent: no answer.
            ([0x01, 0x00, 0x64] + [UInt8](repeating: 9, count: 20), false),
            // ENQUEUE over the payload limit, ending among the bytes being skipped: refused.
            ([0x01, 0x0f, 0xa0] + [UInt8](repeating: 9, count: 100), true),
        ]
    )
    func truncatedFrame(bytes: [UInt8], isRefused: Bool) async throws {
        let server = try await TestServer.start { $0.maximumPayloadLength = 1024 }
        try await withTimeout {
            try await RawConnection.with(server.address) { connection in
                try await connection.send(bytes)
                connection.finishSending()
                let frames = try await connection.readUntilClosed()
                // The oversized task is refused as soon as its id is in (one UPDATE NOT_FOUND for its id); nothing
                // comes for the short one.
                if isRefused {
                    try #require(frames.count == 1, "\(frames)")
                    #expect(frames[0].type == 0x02)
                    #expect(frames[0].taskID == [UInt8](repeating: 9, count: 16))
                    #expect(frames[0].afterTaskID == [TaskStatus.notFound.rawValue])
                } else {
                    #expect(frames.isEmpty, "\(frames)")
                }
            }
            let warning = await server.logs.first { $0.message.contains("protocol violation") }
            #expect(warning.message.contains("stream ended inside a frame"))
            try await server.expectServing()
        }
        try await server.stop()
    }

    @Test("a task id used twice on one connection is an ERROR, then the connection is closed")
    func duplicateTaskID() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1)
        try await withTimeout {
            try await RawConnection.with(server.address) { connection in
                let id = TaskID.random()
                try await connection.send(Self.hello)
                try await connection.send(.submit(id, timeout: nil, payload: ByteBuffer(string: "sleep 5000")))
                try await connection.send(.submit(id, timeout: nil, payload: ByteBuffer(string: "echo again")))
                let frames = try await connection.readUntilClosed()
                try #require(frames.count == 2)
                #expect(frames[0].type == Self.serverHello)
                #expect(frames[1].type == Self.errorType)
                #expect(String(decoding: frames[1].payload, as: UTF8.self).contains("\(id) is already in use"))
            }
            // The first task went with its connection, so the pool is free again.
            try await server.expectServing("echo next", answer: "next")
        }
        try await server.stop()
    }

    @Test("a task over the payload limit fails with payloadTooLarge, and the connection serves the next task")
    func oversizedTask() async throws {
        let server = try await TestServer.start { $0.maximumPayloadLength = 1024 }
        try await withTimeout {
            try await RawConnection.with(server.address) { connection in
                let large = TaskID.random()
                let next = TaskID.random()
                try await connection.send(Self.hello)
                #expect(try await connection.readFrame() == RawFrame(type: Self.serverHello, payload: [1, 0, 0, 4, 0]))
                try await connection.send(
                    .submit(large, timeout: nil, payload: ByteBuffer(repeating: 0x41, count: 4096))
                )
                try await connection.send(.submit(next, timeout: nil, payload: ByteBuffer(string: "next")))

                let failed = try #require(try await connection.readFrame())
                #expect(failed.type == Self.failedType)
                #expect(failed.taskID == large.bytes)
                #expect(failed.afterTaskID.first == FailureReason.payloadTooLarge.rawValue)
                let message = String(decoding: failed.afterTaskID.dropFirst(), as: UTF8.self)
                #expect(message.contains("4096 bytes exceeds the limit of 1024 bytes"))

                let result = try await connection.readFrame()
                #expect(result == RawFrame(type: Self.resultType, payload: next.bytes + Array("next".utf8)))
            }
            try await server.expectServing()
        }
        try await server.stop()
    }

    @Test(
        "a frame only a server sends closes the connection",
        arguments: [
            // DONE, legacy.
            RawConnection.legacyFrame(type: 0x03, TaskID.random().bytes + [1, 2]),
            // UPDATE, legacy.
            RawConnection.legacyFrame(type: 0x02, TaskID.random().bytes + [2]),
            // DONE over the payload limit: refused from its id, without taking it for a task.
            RawConnection.legacyFrame(type: 0x03, TaskID.random().bytes + [UInt8](repeating: 0, count: 4000)),
        ]
    )
    func serverOnlyFrame(frame: [UInt8]) async throws {
        let server = try await TestServer.start { $0.maximumPayloadLength = 1024 }
        try await withTimeout {
            try await RawConnection.with(server.address) { connection in
                try await connection.send(frame)
                #expect(try await connection.readUntilClosed().isEmpty)
            }
            let warning = await server.logs.first { $0.message.contains("protocol violation") }
            #expect(warning.message.contains("which only a server sends"))
            try await server.expectServing()
        }
        try await server.stop()
    }

    @Test("a RESULT from an extended client is answered with ERROR and the connection closed")
    func serverOnlyFrameExtended() async throws {
        let server = try await TestServer.start()
        try await withTimeout {
            try await RawConnection.with(server.address) { connection in
                try await connection.send(Self.hello)
                try await connection.send(.result(TaskID.random(), ByteBuffer(string: "forged")))
                let frames = try await connection.readUntilClosed()
                #expect(frames.map(\.type) == [Self.serverHello, Self.errorType])
                #expect(frames.last.map { String(decoding: $0.payload, as: UTF8.self) }?.contains("RESULT") == true)
            }
            try await server.expectServing()
        }
        try await server.stop()
    }

    @Test("a frame of the wrong size for its type closes the connection")
    func malformedFrame() async throws {
        let server = try await TestServer.start()
        try await withTimeout {
            try await RawConnection.with(server.address) { connection in
                // STATUS carries exactly 16 bytes.
                try await connection.sendLegacy(type: 0x04, [UInt8](repeating: 1, count: 15))
                #expect(try await connection.readUntilClosed().isEmpty)
            }
            let warning = await server.logs.first { $0.message.contains("protocol violation") }
            #expect(warning.message.contains("malformed STATUS frame"))
            try await server.expectServing()
        }
        try await server.stop()
    }

    @Test("after every kind of bad input on one server, a fresh client is served")
    func barrage() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 2) {
            $0.maximumPayloadLength = 1024
        }
        try await withTimeout(.seconds(30)) {
            let bystander = try await server.client()
            let id = TaskID.random().bytes
            let inputs: [[UInt8]] = [
                [0xff, 0xff, 0xff, 0xff, 0xff],
                [0x00],
                [0x05, 0x00, 0x00],
                Self.hello + [0x86, 0xff, 0xff, 0xff, 0xff],
                Self.hello + [0x84, 0x00, 0x00, 0x00, 0x03, 1, 2, 3],
                [0x01, 0x00, 0x05, 1, 2, 3, 4, 5],
                RawConnection.legacyFrame(type: 0x01, id + Array("sleep 5000".utf8))
                    + RawConnection.legacyFrame(type: 0x01, id + Array("sleep 5000".utf8)),
                RawConnection.legacyFrame(type: 0x03, id + [UInt8](repeating: 0, count: 60_000)),
                Self.hello + [0x81, 0x00, 0x00, 0x00, 0x10] + id,
                Self.hello + [0x80, 0x00, 0x00, 0x00, 0x01, 0x01],
            ]
            for input in inputs {
                try await RawConnection.with(server.address) { connection in
                    try await connection.send(input)
                    let frames = try await connection.readUntilClosed()
                    // A client that said HELLO is told why (HELLO, then ERROR); one of the original protocol, which
                    // has no ERROR frame, is closed without a byte.
                    if input.starts(with: Self.hello) {
                        #expect(frames.map(\.type) == [Self.serverHello, Self.errorType], "\(input)")
                    } else {
                        #expect(frames.isEmpty, "\(input): \(frames.map(\.type))")
                    }
                }
            }
            let violations = server.logs.entries.filter { $0.message.contains("protocol violation") }
            #expect(violations.count == inputs.count)
            #expect(try await bystander.submit("echo unharmed") == Array("unharmed".utf8))
            try await bystander.close()
            try await server.expectServing("echo fresh", answer: "fresh")
        }
        try await server.stop()
    }
}

extension TestServer {
    /// Checks that a new client connection is served: `task` is answered with `answer` (by default the task
    /// itself, as the echo handler does).
    func expectServing(
        _ task: String = "served",
        answer: String? = nil,
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws {
        let client = try await client()
        let result = try await client.submit(task)
        #expect(String(decoding: result, as: UTF8.self) == answer ?? task, sourceLocation: sourceLocation)
        try await client.close()
    }
}
