import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import Logging
import NIOCore
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

/// A client of aiotask 0.0.2 — which never says HELLO — is served byte for byte in the original protocol.
@Suite("Legacy wire protocol")
struct LegacyWireTests {
    static let enqueue: UInt8 = 1
    static let update: UInt8 = 2
    static let done: UInt8 = 3
    static let status: UInt8 = 4
    static let statusDone: UInt8 = 2
    static let notFound: UInt8 = 255

    /// The id of the example in docs/protocol.md: `12345678-9abc-4def-8123-456789abcdef`.
    static let exampleID: [UInt8] = [
        0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0x4d, 0xef, 0x81, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
    ]

    @Test("ENQUEUE is answered with DONE carrying the same id and the result, byte for byte")
    func enqueueThenDone() async throws {
        let server = try await TestServer.start(workers: 1)
        try await withTimeout {
            try await RawConnection.with(server.address) { connection in
                // The example frame of docs/protocol.md, as the original client encodes it.
                try await connection.send([0x01, 0x00, 0x15] + Self.exampleID + Array("hello".utf8))
                let bytes = try await connection.readBytes(count: 3 + 16 + 5)
                #expect(bytes == [0x03, 0x00, 0x15] + Self.exampleID + Array("hello".utf8))
            }
        }
        try await server.stop()
    }

    @Test("STATUS of a finished task is answered UPDATE DONE, of an unknown one UPDATE NOT_FOUND")
    func statusQueries() async throws {
        let server = try await TestServer.start(workers: 1)
        try await withTimeout {
            try await RawConnection.with(server.address) { connection in
                let id = TaskID.random().bytes
                try await connection.sendLegacy(type: Self.enqueue, id + Array("x".utf8))
                #expect(try await connection.readFrame() == RawFrame(type: Self.done, payload: id + [0x78]))

                try await connection.sendLegacy(type: Self.status, id)
                let answer = try await connection.readBytes(count: 3 + 17)
                #expect(answer == [0x02, 0x00, 0x11] + id + [Self.statusDone])

                let unknown = TaskID.random().bytes
                try await connection.sendLegacy(type: Self.status, unknown)
                let unknownAnswer = try await connection.readBytes(count: 3 + 17)
                #expect(unknownAnswer == [0x02, 0x00, 0x11] + unknown + [Self.notFound])
            }
        }
        try await server.stop()
    }

    @Test("a task of the fail handler is answered UPDATE NOT_FOUND, and STATUS keeps saying NOT_FOUND")
    func failHandler() async throws {
        let server = try await TestServer.start(handler: .builtin("fail"), workers: 1)
        try await withTimeout {
            try await RawConnection.with(server.address) { connection in
                let id = TaskID.random().bytes
                try await connection.sendLegacy(type: Self.enqueue, id + Array("boom".utf8))
                #expect(try await connection.readFrame() == RawFrame(type: Self.update, payload: id + [Self.notFound]))
                try await connection.sendLegacy(type: Self.status, id)
                #expect(try await connection.readFrame() == RawFrame(type: Self.update, payload: id + [Self.notFound]))
            }
            // The reason is in the server's log, since the client cannot be told.
            let logged = await server.logs.first { $0.message.contains("task failed") }
            #expect(logged.message.contains("boom"))
        }
        try await server.stop()
    }

    @Test("a failed task gets no DONE: the next task's DONE follows its UPDATE NOT_FOUND")
    func failedTaskNeverDone() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1)
        try await withTimeout {
            try await RawConnection.with(server.address) { connection in
                let failing = TaskID.random().bytes
                let next = TaskID.random().bytes
                // One process runs them in order, so whatever is sent for the first comes before the second's DONE.
                try await connection.send(
                    RawConnection.legacyFrame(type: Self.enqueue, failing + Array("fail on purpose".utf8))
                        + RawConnection.legacyFrame(type: Self.enqueue, next + Array("echo fine".utf8))
                )
                var frames: [RawFrame] = []
                while let frame = try await connection.readFrame() {
                    frames.append(frame)
                    if frame.type == Self.done && frame.taskID == next { break }
                }
                #expect(
                    frames == [
                        RawFrame(type: Self.update, payload: failing + [Self.notFound]),
                        RawFrame(type: Self.done, payload: next + Array("fine".utf8)),
                    ]
                )
            }
        }
        try await server.stop()
    }

    @Test("a result of 65,519 bytes is sent as DONE; one byte more is answered UPDATE NOT_FOUND")
    func resultTooLargeForLegacyFrame() async throws {
        // Answers a task "N" with N bytes, so a tiny task can have a result too large for a DONE frame.
        let script = try HandlerScript(
            """
            for task in tasks():
                reply(0, bytes(i % 251 for i in range(int(task))))
            """
        )
        defer { script.remove() }
        let server = try await TestServer.start(handler: script.command, workers: 1)
        try await withTimeout {
            try await RawConnection.with(server.address) { connection in
                let fits = TaskID.random().bytes
                try await connection.sendLegacy(type: Self.enqueue, fits + Array("65519".utf8))
                let done = try #require(try await connection.readFrame())
                #expect(
                    done.type == Self.done,
                    "log: \(server.logs.entries.filter { $0.level >= .warning }.map(\.message))"
                )
                #expect(done.taskID == fits)
                #expect(done.afterTaskID == (0..<65_519).map { UInt8($0 % 251) })

                let tooLarge = TaskID.random().bytes
                try await connection.sendLegacy(type: Self.enqueue, tooLarge + Array("65520".utf8))
                #expect(
                    try await connection.readFrame() == RawFrame(type: Self.update, payload: tooLarge + [Self.notFound])
                )
            }
            let logged = await server.logs.first { $0.message.contains("exceeds the client's limit") }
            #expect(logged.level == .warning)
        }
        try await server.stop()
    }

    @Test("a task over the server's limit is answered UPDATE NOT_FOUND and the connection carries on")
    func taskOverServerLimit() async throws {
        let server = try await TestServer.start(workers: 1) { $0.maximumPayloadLength = 1024 }
        try await withTimeout {
            try await RawConnection.with(server.address) { connection in
                let large = TaskID.random().bytes
                let small = TaskID.random().bytes
                try await connection.send(
                    RawConnection.legacyFrame(type: Self.enqueue, large + [UInt8](repeating: 7, count: 4096))
                        + RawConnection.legacyFrame(type: Self.enqueue, small + Array("small".utf8))
                )
                #expect(
                    try await connection.readFrame() == RawFrame(type: Self.update, payload: large + [Self.notFound])
                )
                #expect(
                    try await connection.readFrame() == RawFrame(type: Self.done, payload: small + Array("small".utf8))
                )
            }
        }
        try await server.stop()
    }

    @Test("a legacy connection never receives a frame of type 128 or more, whatever happens to its tasks")
    func neverAnExtensionFrame() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1) {
            $0.maximumPayloadLength = 1024
            $0.defaultTaskTimeout = .milliseconds(300)
        }
        try await withTimeout {
            try await RawConnection.with(server.address) { connection in
                let ids = (0..<6).map { _ in TaskID.random().bytes }
                let unknown = TaskID.random().bytes
                // Success, handler error, crash, timeout, oversized task, and status queries.
                try await connection.send(
                    RawConnection.legacyFrame(type: Self.enqueue, ids[0] + Array("echo ok".utf8))
                        + RawConnection.legacyFrame(type: Self.enqueue, ids[1] + Array("fail no".utf8))
                        + RawConnection.legacyFrame(type: Self.enqueue, ids[2] + Array("exit 3".utf8))
                        + RawConnection.legacyFrame(type: Self.enqueue, ids[3] + Array("sleep 10000".utf8))
                        + RawConnection.legacyFrame(type: Self.enqueue, ids[4] + [UInt8](repeating: 1, count: 2000))
                        + RawConnection.legacyFrame(type: Self.status, ids[5])
                        + RawConnection.legacyFrame(type: Self.status, unknown)
                )
                var answered = Set<[UInt8]>()
                while answered.count < 7 {
                    let frame = try #require(try await connection.readFrame())
                    #expect(frame.type < 0x80, "a legacy client cannot parse frame type \(frame.type)")
                    answered.insert(frame.taskID)
                }
                #expect(answered == Set(ids + [unknown]))
                // A protocol violation closes the connection without an ERROR frame.
                try await connection.send([0x05, 0x00, 0x00])
                let rest = try await connection.readUntilClosed()
                #expect(rest.isEmpty, "got \(rest.map(\.type)) after the violation")
            }
        }
        try await server.stop()
    }

    @Test("the original client's framing, run by a Python client, gets every result over TCP")
    func pythonLegacyClient() async throws {
        let server = try await TestServer.start(workers: 2, listen: [.tcp(host: "127.0.0.1", port: 0)])
        let port = try #require(server.server.localAddresses.first { $0.protocol == .inet }?.port)
        try await withTimeout(.seconds(30)) {
            let client = try SpawnedProcess.spawn(
                "python3",
                [
                    Products.repositoryRoot + "/Tests/legacy-client/legacy_client.py",
                    "--host", "127.0.0.1", "--port", "\(port)", "--tasks", "500",
                ]
            )
            let exit = try await client.wait()
            #expect(exit == .exited(0), "stdout: \(client.standardOutput)\nstderr: \(client.standardError)")
            #expect(client.standardOutput.contains("500/500 tasks matched"))
        }
        let info = try await server.server.info()
        #expect(info.tasks.succeeded == 500)
        try await server.stop()
    }
}
