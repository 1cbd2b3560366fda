import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import NIOCore
import Testing

@Suite("Submitting tasks")
struct SubmitTests {
    @Test("2,000 pipelined tasks each get their own result when answered out of order")
    func pipelinedOutOfOrder() async throws {
        let count = 2000
        let server = try await StubServer.start(
            behavior: StubBehaviors.standard { connection, id, payload in
                connection.held.append(.submit(id, timeout: nil, payload: payload))
                guard connection.held.count == count else { return }
                // Answer only once every task has arrived, in a shuffled order.
                for case .submit(let id, _, var payload) in connection.held.shuffled() {
                    var result = ByteBuffer(string: "result of ")
                    result.writeBuffer(&payload)
                    connection.send(.result(id, result))
                }
                connection.held = []
            }
        )
        try await withTimeout(.seconds(60)) {
            let client = try await AiotaskClient.connect(to: server.address)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<count {
                    group.addTask {
                        let result = try await client.submit("task \(index)")
                        #expect(String(decoding: result, as: UTF8.self) == "result of task \(index)")
                    }
                }
                try await group.waitForAll()
            }
            let ids = server.log.frames.compactMap(\.submittedID)
            #expect(Set(ids).count == count)
            try await client.close()
        }
        await server.stop()
    }

    @Test("a FAILED frame becomes a TaskFailure with the task's id, reason and message")
    func failureFrame() async throws {
        let server = try await StubServer.start(
            behavior: StubBehaviors.standard { connection, id, payload in
                switch String(buffer: payload) {
                case "slow": connection.send(.failed(id, .timedOut, message: "killed after 30 s"))
                case "odd": connection.send(.failed(id, FailureReason(rawValue: 200), message: ""))
                case "ok": connection.send(.result(id, payload))
                default: connection.send(.failed(id, .handlerError, message: "boom"))
                }
            }
        )
        try await withTimeout {
            let client = try await AiotaskClient.connect(to: server.address)

            let failure = await #expect(throws: TaskFailure.self) { _ = try await client.submit("slow") }
            let submitted = server.log.frames.compactMap(\.submittedID)
            #expect(failure == TaskFailure(taskID: submitted[0], reason: .timedOut, message: "killed after 30 s"))
            #expect(failure?.description == "task \(submitted[0]) failed (timed out): killed after 30 s")

            let handlerFailure = await #expect(throws: TaskFailure.self) { _ = try await client.submit([0]) }
            #expect(handlerFailure?.reason == .handlerError)
            #expect(handlerFailure?.message == "boom")

            let unknown = await #expect(throws: TaskFailure.self) { _ = try await client.submit("odd") }
            #expect(unknown?.reason.rawValue == 200)

            // The connection carries on after failures.
            #expect(try await client.submit("ok") == Array("ok".utf8))
            try await client.close()
        }
        await server.stop()
    }

    @Test("sends the task timeout in milliseconds, or 0 for the server's default")
    func sendsTimeout() async throws {
        let server = try await StubServer.start()
        try await withTimeout {
            let client = try await AiotaskClient.connect(to: server.address)
            _ = try await client.submit("a", timeout: .seconds(2))
            _ = try await client.submit("b")
            let submits = server.log.frames.filter(\.isSubmit)
            #expect(submits.map(\.timeout) == [.milliseconds(2000), nil])
            try await client.close()
        }
        await server.stop()
    }

    @Test("a task over the server's limit fails at once without being sent")
    func oversizedTask() async throws {
        let server = try await StubServer.start(behavior: StubBehaviors.standard(maximumPayloadLength: 1000))
        try await withTimeout {
            let client = try await AiotaskClient.connect(to: server.address)
            #expect(client.serverMaximumPayloadLength == 1000)

            let failure = await #expect(throws: TaskFailure.self) {
                _ = try await client.submit([UInt8](repeating: 7, count: 1001))
            }
            #expect(failure?.reason == .payloadTooLarge)
            #expect(failure?.message.contains("1001") == true)
            await #expect(throws: TaskFailure.self) {
                _ = try await client.enqueue(ByteBuffer(repeating: 7, count: 1001))
            }

            // Exactly at the limit is fine, and it is the only task the server saw.
            let exact = [UInt8](repeating: 8, count: 1000)
            #expect(try await client.submit(exact) == exact)
            let submits = server.log.frames.filter(\.isSubmit)
            #expect(submits.count == 1)
            try await client.close()
        }
        await server.stop()
    }

    @Test("a result over the client's limit fails its task with payloadTooLarge, and the connection carries on")
    func oversizedResult() async throws {
        let server = try await StubServer.start(
            behavior: StubBehaviors.standard { connection, id, payload in
                let size = Int(String(buffer: payload)) ?? 0
                connection.send(.result(id, ByteBuffer(repeating: 1, count: size)))
            }
        )
        try await withTimeout {
            let client = try await AiotaskClient.connect(to: server.address, maximumResultLength: 100)
            let failure = await #expect(throws: TaskFailure.self) { _ = try await client.submit("200") }
            #expect(failure?.reason == .payloadTooLarge)
            #expect(failure?.message.contains("200 bytes") == true)
            #expect(try await client.submit("100").count == 100)
            try await client.close()
        }
        await server.stop()
    }

    @Test("enqueue returns a handle whose result can be awaited more than once")
    func enqueueHandle() async throws {
        let server = try await StubServer.start()
        try await withTimeout {
            let client = try await AiotaskClient.connect(to: server.address)
            let handle = try await client.enqueue(ByteBuffer(string: "queued"))
            #expect(try await handle.result() == ByteBuffer(string: "queued"))
            #expect(try await handle.result() == ByteBuffer(string: "queued"))
            #expect(server.log.frames.compactMap(\.submittedID) == [handle.id])
            try await client.close()
        }
        await server.stop()
    }
}

extension Frame {
    /// The timeout of a SUBMIT frame.
    fileprivate var timeout: Duration? {
        if case .submit(_, let timeout, _) = self { return timeout }
        return nil
    }
}
