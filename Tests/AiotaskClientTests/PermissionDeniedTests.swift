import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Testing

/// A server that refuses the client's user: its `ERROR` starts with `permission denied: `.
@Suite("Permission denied")
struct PermissionDeniedTests {
    @Test(
        "an ERROR permission denied in answer to HELLO fails the connect with permissionDenied and the server's words"
    )
    func refusedUser() async throws {
        let message =
            "uid 65534 (gid 65534) is not allowed on unix:/run/aiotask/aiotask.sock (allow-users, allow-groups)"
        let server = try await StubServer.start { connection, _ in
            connection.send(.error(ErrorMessage.permissionDeniedPrefix + message))
            connection.close()
        }
        try await withTimeout {
            let error = await #expect(throws: AiotaskClientError.self) {
                _ = try await AiotaskClient.connect(to: server.address)
            }
            #expect(error == AiotaskClientError(.permissionDenied, reason: message))
            #expect("\(error.map { "\($0)" } ?? "")" == "the server refused this user: \(message)")
        }
        await server.stop()
    }

    @Test("an ERROR with any other message is a serverError, even one that mentions permission later")
    func otherError() async throws {
        let server = try await StubServer.start { connection, _ in
            connection.send(.error("protocol violation: no permission denied: here"))
            connection.close()
        }
        try await withTimeout {
            let error = await #expect(throws: AiotaskClientError.self) {
                _ = try await AiotaskClient.connect(to: server.address)
            }
            #expect(error?.code == .serverError)
        }
        await server.stop()
    }
}
