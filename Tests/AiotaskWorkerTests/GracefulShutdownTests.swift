import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import NIOCore
import Testing

@testable import AiotaskWorker

@Suite("Stopping without losing a task", .serialized)
struct GracefulShutdownTests {
    @Test("shutdown says GOODBYE, refuses later tasks as shuttingDown, answers the running one, then ends the stream")
    func goodbyeThenCleanClose() async throws {
        let worker = try await TestServer.start(handler: .builtin("chaos"), workers: 1)
        try await withTimeout(.seconds(30)) {
            try await RawConnection.with(worker.address) { connection in
                try await connection.send(.hello(Hello(maximumPayloadLength: 1 << 20)))
                #expect(try await connection.readFrame()?.type == FrameType.hello.rawValue)
                let running = TaskID.random()
                try await connection.send(.submit(running, timeout: nil, payload: ByteBuffer(string: "sleep 3000")))
                while try await worker.server.info().workers.busy == 0 { try await Task.sleep(for: .milliseconds(5)) }

                let stopping = Task { try await worker.server.shutdown() }
                let goodbye = try await connection.readFrame()
                #expect(goodbye?.type == FrameType.goodbye.rawValue)
                // Sent while the running task keeps the server draining for three seconds.
                let late = TaskID.random()
                try await connection.send(.submit(late, timeout: nil, payload: ByteBuffer(string: "echo late")))

                let frames = try await connection.readUntilClosed()
                #expect(!connection.wasReset, "the server reset the connection instead of ending it")
                let refusal = frames.first { $0.type == FrameType.failed.rawValue && $0.taskID == late.bytes }
                #expect(refusal?.afterTaskID.first == FailureReason.shuttingDown.rawValue, "\(frames)")
                let result = frames.first { $0.type == FrameType.result.rawValue && $0.taskID == running.bytes }
                #expect(result.map { String(decoding: $0.afterTaskID, as: UTF8.self) } == "slept 3000", "\(frames)")
                try await stopping.value
            }
        }
        try? FileManager.default.removeItem(atPath: worker.directory)
    }

    @Test("a client that connects while the server drains is told GOODBYE right after HELLO")
    func goodbyeAfterLateHello() async throws {
        let worker = try await TestServer.start(handler: .builtin("chaos"), workers: 1)
        try await withTimeout(.seconds(30)) {
            try await RawConnection.with(worker.address) { early in
                try await early.send(.hello(Hello(maximumPayloadLength: 1 << 20)))
                _ = try await early.readFrame()
                try await RawConnection.with(worker.address) { late in
                    try await early.send(
                        .submit(TaskID.random(), timeout: nil, payload: ByteBuffer(string: "sleep 3000"))
                    )
                    while try await worker.server.info().workers.busy == 0 {
                        try await Task.sleep(for: .milliseconds(5))
                    }
                    let stopping = Task { try await worker.server.shutdown() }
                    #expect(try await early.readFrame()?.type == FrameType.goodbye.rawValue)

                    try await late.send(.hello(Hello(maximumPayloadLength: 1 << 20)))
                    #expect(try await late.readFrame()?.type == FrameType.hello.rawValue)
                    #expect(try await late.readFrame()?.type == FrameType.goodbye.rawValue)
                    try await stopping.value
                }
            }
        }
        try? FileManager.default.removeItem(atPath: worker.directory)
    }
}
