import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import NIOCore
import Testing

@Suite("The server saying GOODBYE")
struct GoodbyeTests {
    /// Answers HELLO; answers a task `goodbye` with GOODBYE and then its result; never answers other tasks.
    private static let saysGoodbye: StubBehavior = { connection, frame in
        switch frame {
        case .hello:
            connection.send(.hello(Hello(maximumPayloadLength: 1 << 20)))
        case .submit(let id, _, let payload) where String(buffer: payload) == "goodbye":
            connection.send(.goodbye("stopping for an upgrade"))
            connection.send(.result(id, payload))
        default:
            break
        }
    }

    @Test("after GOODBYE new tasks are not sent, and those the server did not take fail as shuttingDown")
    func untakenTasksAreNotStarted() async throws {
        let server = try await StubServer.start(behavior: Self.saysGoodbye)
        try await withTimeout {
            let client = try await AiotaskClient.connect(to: server.address)
            let untaken = try await client.enqueue(ByteBuffer(string: "untaken"))
            // Its result comes after the GOODBYE, so the client has seen that by now.
            #expect(try await client.submit("goodbye") == Array("goodbye".utf8))

            let refused = await #expect(throws: TaskFailure.self) { _ = try await client.submit("refused") }
            #expect(refused?.reason == .shuttingDown)
            #expect(refused?.message.contains("stopping for an upgrade") == true, "\(String(describing: refused))")
            #expect(server.log.frames.filter(\.isSubmit).count == 2)

            server.dropConnections()
            let failure = await #expect(throws: TaskFailure.self) { _ = try await untaken.result() }
            #expect(failure?.reason == .shuttingDown, "\(String(describing: failure))")
            #expect(failure?.reason.taskWasNotStarted == true)
            // A task submitted once the connection is gone was never sent either, and says why.
            let afterClose = await #expect(throws: TaskFailure.self) { _ = try await client.submit("after") }
            #expect(afterClose?.reason == .shuttingDown, "\(String(describing: afterClose))")
            try await client.close()
        }
        await server.stop()
    }

    @Test("without GOODBYE, a task pending when the connection drops fails with connectionLost")
    func closeWithoutGoodbyeIsAmbiguous() async throws {
        let server = try await StubServer.start { connection, frame in
            if case .hello = frame { connection.send(.hello(Hello(maximumPayloadLength: 1 << 20))) }
        }
        try await withTimeout {
            let client = try await AiotaskClient.connect(to: server.address)
            let pending = try await client.enqueue(ByteBuffer(string: "pending"))
            await server.log.wait { $0.filter(\.isSubmit).count == 1 }
            server.dropConnections()
            let error = await #expect(throws: AiotaskClientError.self) { _ = try await pending.result() }
            #expect(error?.code == .connectionLost)
            try await client.close()
        }
        await server.stop()
    }
}
