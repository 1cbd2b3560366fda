import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import NIOCore
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

@Suite("Serving tasks")
struct EchoTests {
    @Test("a task submitted over a Unix socket comes back from the echo handler")
    func echoOverUnixSocket() async throws {
        let server = try await TestServer.start()
        try await withTimeout {
            let client = try await server.client()
            #expect(try await client.submit("hello") == Array("hello".utf8))
            try await client.close()
        }
        try await server.stop()
    }

    @Test("large tasks (written without copying, read in pieces) and small ones in flight together come back intact")
    func largeAndSmallTasksTogether() async throws {
        let server = try await TestServer.start { $0.prefetch = 2 }
        try await withTimeout {
            let client = try await server.client()
            // Larger than the 16 KiB copy limit and than the 1 MiB pipe, so every large path is taken.
            let sizes = [2 * 1024 * 1024 + 3, 17, 20_000, 0, 1024 * 1024 + 1, 5]
            try await withThrowingTaskGroup(of: Bool.self) { group in
                for (index, size) in sizes.enumerated() {
                    group.addTask {
                        let payload = ByteBuffer(bytes: (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ index) })
                        return try await client.submit(payload) == payload
                    }
                }
                for try await intact in group { #expect(intact) }
            }
            try await client.close()
        }
        try await server.stop()
    }
}
