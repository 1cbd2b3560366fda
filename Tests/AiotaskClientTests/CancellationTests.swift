import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import NIOCore
import Testing

@Suite("Cancelling tasks")
struct CancellationTests {
    /// A server that never answers SUBMIT, and answers CANCEL with a cancelled failure.
    private static let holdingBehavior = StubBehaviors.standard { _, _, _ in }

    @Test("cancelling the Swift task awaiting submit sends CANCEL and ends the wait with a cancelled failure")
    func cancelSubmit() async throws {
        let server = try await StubServer.start(behavior: Self.holdingBehavior)
        try await withTimeout {
            let client = try await AiotaskClient.connect(to: server.address)
            let task = Task { try await client.submit("forever") }
            let submits = await server.log.wait(forCount: 1, where: \.isSubmit)
            let id = try #require(submits.first?.submittedID)

            task.cancel()
            let failure = await #expect(throws: TaskFailure.self) { _ = try await task.value }
            #expect(failure == TaskFailure(taskID: id, reason: .cancelled, message: "cancelled by the client"))
            await server.log.wait { $0.contains(.cancel(id)) }

            // The server's late FAILED for the cancelled task is ignored; the connection carries on.
            #expect(try await client.enqueue(ByteBuffer(string: "next")).id != id)
            try await client.close()
        }
        await server.stop()
    }

    @Test("cancelling the Swift task awaiting a handle's result sends CANCEL")
    func cancelHandleResult() async throws {
        let server = try await StubServer.start(behavior: Self.holdingBehavior)
        try await withTimeout {
            let client = try await AiotaskClient.connect(to: server.address)
            let handle = try await client.enqueue(ByteBuffer(string: "forever"))
            let task = Task { try await handle.result() }
            task.cancel()
            let failure = await #expect(throws: TaskFailure.self) { _ = try await task.value }
            #expect(failure?.reason == .cancelled)
            await server.log.wait { $0.contains(.cancel(handle.id)) }
            // Every wait for the same result sees the cancellation.
            await #expect(throws: TaskFailure.self) { _ = try await handle.result() }
            try await client.close()
        }
        await server.stop()
    }

    @Test("a handle's cancel() sends CANCEL and the result is the server's cancelled failure")
    func cancelHandle() async throws {
        let server = try await StubServer.start(behavior: Self.holdingBehavior)
        try await withTimeout {
            let client = try await AiotaskClient.connect(to: server.address)
            let handle = try await client.enqueue(ByteBuffer(string: "forever"))
            handle.cancel()
            let failure = await #expect(throws: TaskFailure.self) { _ = try await handle.result() }
            #expect(failure == TaskFailure(taskID: handle.id, reason: .cancelled, message: "cancelled by request"))
            #expect(server.log.frames.contains(.cancel(handle.id)))
            try await client.close()
        }
        await server.stop()
    }

    @Test("a Swift task cancelled before it submits fails at once and sends nothing")
    func cancelledBeforeSubmit() async throws {
        let server = try await StubServer.start()
        try await withTimeout {
            let client = try await AiotaskClient.connect(to: server.address)
            let task = Task {
                withUnsafeCurrentTask { $0?.cancel() }
                return try await client.submit("never sent")
            }
            let failure = await #expect(throws: TaskFailure.self) { _ = try await task.value }
            #expect(failure?.reason == .cancelled)

            #expect(try await client.submit("sent") == Array("sent".utf8))
            let submits = server.log.frames.filter(\.isSubmit)
            #expect(submits.count == 1)
            try await client.close()
        }
        await server.stop()
    }
}
