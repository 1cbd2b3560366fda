import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import NIOCore
import Testing

@testable import AiotaskWorker

@Suite("Serving tasks")
struct EchoTests {
    @Test("a task submitted over a Unix socket comes back from the echo handler")
    func echoOverUnixSocket() async throws {
        let worker = try await TestServer.start()
        try await withTimeout {
            let client = try await worker.client()
            #expect(try await client.submit("hello") == Array("hello".utf8))
            try await client.close()
        }
        try await worker.stop()
    }
}
