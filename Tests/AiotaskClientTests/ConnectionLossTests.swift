import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import NIOCore
import Testing

@Suite("Losing the connection")
struct ConnectionLossTests {
    /// A server that answers HELLO and nothing else.
    private static let silentAfterHello: StubBehavior = { connection, frame in
        if case .hello = frame { connection.send(.hello(Hello(maximumPayloadLength: 1 << 20))) }
    }

    /// Starts `submits` tasks, a status query and an info request, waits until the server has all of them, runs
    /// `breakConnection`, and returns how each request ended.
    private static func pendingRequests(
        on client: AiotaskClient,
        server: StubServer,
        submits: Int = 50,
        breakConnection: @Sendable () -> Void
    ) async throws -> [any Error] {
        let handle = try await client.enqueue(ByteBuffer(string: "handle"))
        return await withTaskGroup(of: (any Error)?.self) { group in
            for index in 0..<submits {
                group.addTask {
                    do {
                        _ = try await client.submit("task \(index)")
                        return nil
                    } catch {
                        return error
                    }
                }
            }
            group.addTask {
                do {
                    _ = try await handle.status()
                    return nil
                } catch {
                    return error
                }
            }
            group.addTask {
                do {
                    _ = try await client.serverInfo()
                    return nil
                } catch {
                    return error
                }
            }
            group.addTask {
                do {
                    _ = try await handle.result()
                    return nil
                } catch {
                    return error
                }
            }
            await server.log.wait { frames in
                frames.filter(\.isSubmit).count == submits + 1 && frames.contains(.status(handle.id))
                    && frames.contains(.infoRequest)
            }
            breakConnection()
            var errors: [any Error] = []
            for await error in group {
                errors.append(error ?? CancellationError())
            }
            return errors
        }
    }

    @Test("when the server closes the connection, every pending request fails with connectionLost")
    func serverCloses() async throws {
        let server = try await StubServer.start(behavior: Self.silentAfterHello)
        try await withTimeout {
            let client = try await AiotaskClient.connect(to: server.address)
            let errors = try await Self.pendingRequests(on: client, server: server) { server.dropConnections() }
            #expect(errors.count == 53)
            for error in errors {
                #expect((error as? AiotaskClientError)?.code == .connectionLost, "\(error)")
            }
            // Later requests fail at once with the same error.
            let later = await #expect(throws: AiotaskClientError.self) { _ = try await client.submit("late") }
            #expect(later == AiotaskClientError(.connectionLost, reason: "the server closed the connection"))
            await #expect(throws: AiotaskClientError.self) { _ = try await client.serverInfo() }
            try await client.close()
        }
        await server.stop()
    }

    @Test("close() fails every pending request with connectionLost, and closing twice is harmless")
    func clientCloses() async throws {
        let server = try await StubServer.start(behavior: Self.silentAfterHello)
        try await withTimeout {
            let client = try await AiotaskClient.connect(to: server.address)
            let errors = try await Self.pendingRequests(on: client, server: server) {
                Task { try await client.close() }
            }
            #expect(errors.count == 53)
            for error in errors {
                #expect(
                    error as? AiotaskClientError
                        == AiotaskClientError(.connectionLost, reason: "the client closed the connection"),
                    "\(error)"
                )
            }
            try await client.close()
            try await client.close()
        }
        await server.stop()
    }

    @Test("an ERROR frame fails every pending request with the server's message")
    func serverError() async throws {
        let server = try await StubServer.start(behavior: Self.silentAfterHello)
        try await withTimeout {
            let client = try await AiotaskClient.connect(to: server.address)
            let errors = try await Self.pendingRequests(on: client, server: server, submits: 10) {
                server.sendToAll(.error("shutting down for maintenance"))
            }
            #expect(errors.count == 13)
            for error in errors {
                #expect(
                    error as? AiotaskClientError
                        == AiotaskClientError(.serverError, reason: "shutting down for maintenance"),
                    "\(error)"
                )
            }
            try await client.close()
        }
        await server.stop()
    }

    @Test("bytes that are not a frame fail every pending request with protocolViolation")
    func garbage() async throws {
        let server = try await StubServer.start(behavior: Self.silentAfterHello)
        try await withTimeout {
            let client = try await AiotaskClient.connect(to: server.address)
            let errors = try await Self.pendingRequests(on: client, server: server, submits: 10) {
                server.sendRawToAll([0x7F, 0, 0])
            }
            #expect(errors.count == 13)
            for error in errors {
                #expect((error as? AiotaskClientError)?.code == .protocolViolation, "\(error)")
            }
            try await client.close()
        }
        await server.stop()
    }
}
