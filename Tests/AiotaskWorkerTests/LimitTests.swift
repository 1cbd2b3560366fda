import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import NIOCore
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

@Suite("Limits on what clients may hold", .serialized)
struct LimitTests {
    @Test("a connection past its in-flight limit has its task rejected at once; other connections are not held to it")
    func tasksPerConnection() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1) {
            $0.maximumTasksPerConnection = 2
        }
        try await withTimeout {
            let client = try await server.client()
            let running = try await client.enqueue("sleep 60000")
            let queued = try await client.enqueue("echo queued")
            let failure = try await client.failure(of: "echo one too many")
            #expect(failure?.reason == .rejected)
            #expect(failure?.message == "too many tasks in flight on this connection (limit 2)")

            let other = try await server.client()
            let accepted = try await other.enqueue("echo other")
            #expect(try await accepted.status() == .inQueue)

            running.cancel()
            #expect(try await queued.text() == "queued")
            #expect(try await accepted.text() == "other")
            try await other.close()
            try await client.close()
        }
        try await server.stop()
    }

    @Test("a task that would take the queued bytes past their limit is rejected; smaller ones still queue")
    func queuedBytes() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1) {
            $0.maximumQueuedBytes = 1000
        }
        try await withTimeout {
            let client = try await server.client()
            let running = try await client.enqueue("sleep 60000")
            _ = try await client.waitForInfo { $0.tasks.running == 1 }
            let large = "echo " + String(repeating: "a", count: 595)
            let queued = try await client.enqueue(large)
            let failure = try await client.failure(of: large)
            #expect(failure?.reason == .rejected)
            #expect(failure?.message == "queue full: 600 bytes waiting (limit 1000 bytes)")
            let small = try await client.enqueue("echo small")

            running.cancel()
            #expect(try await queued.text() == String(repeating: "a", count: 595))
            #expect(try await small.text() == "small")
            try await client.close()
        }
        try await server.stop()
    }

    @Test("connections past the limit are closed as they arrive and logged; a freed place can be taken again")
    func connections() async throws {
        let server = try await TestServer.start(workers: 1) { $0.maximumConnections = 1 }
        try await withTimeout {
            let first = try await server.client()
            await #expect(throws: AiotaskClientError.self) {
                _ = try await AiotaskClient.connect(to: server.address, connectTimeout: .seconds(5))
            }
            _ = await server.logs.first { $0.message.contains("refusing connection: 1 connections are open") }
            #expect(try await first.submit("still served") == Array("still served".utf8))
            try await first.close()

            // The server sees the close a moment later; until then a new connection is still refused.
            var next: AiotaskClient?
            while next == nil {
                next = try? await AiotaskClient.connect(to: server.address, connectTimeout: .seconds(5))
            }
            #expect(try await next?.submit("next") == Array("next".utf8))
            try await next?.close()
        }
        try await server.stop()
    }
}
