import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import NIOCore
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

@Suite("Bounded queue")
struct QueueLimitTests {
    @Test("a task beyond the queue's capacity is rejected at once; the queued ones still run")
    func rejectWhenFull() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1) {
            $0.queueCapacity = 2
        }
        try await withTimeout {
            let client = try await server.client()
            // The running task only ends when cancelled, so the rejection cannot have waited for the queue to move.
            let running = try await client.enqueue("sleep 60000")
            let first = try await client.enqueue("echo first")
            let second = try await client.enqueue("echo second")
            let failure = try #require(try await client.failure(of: "echo third"))
            #expect(failure.reason == .rejected)
            #expect(failure.message.contains("capacity 2"), "\(failure.message)")

            // The rejection came while the others were still in flight, and left them alone.
            let info = try await client.serverInfo()
            #expect(info.queue.length == 2)
            #expect(info.queue.capacity == 2)
            #expect(try await running.status() == .processing)
            #expect(try await first.status() == .inQueue)
            #expect(try await second.status() == .inQueue)

            running.cancel()
            #expect(await running.failure()?.reason == .cancelled)
            #expect(try await first.text() == "first")
            #expect(try await second.text() == "second")
            // With room again, the queue takes tasks.
            #expect(try await client.submit("echo fourth") == Array("fourth".utf8))
            try await client.close()
        }
        try await server.stop()
    }

    @Test("the capacity counts the tasks of every connection together")
    func sharedAcrossConnections() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1) {
            $0.queueCapacity = 1
        }
        try await withTimeout {
            let one = try await server.client()
            let two = try await server.client()
            let running = try await one.enqueue("sleep 60000")
            let queued = try await one.enqueue("echo queued")
            try await one.waitForInfo { $0.queue.length == 1 }
            let failure = try #require(try await two.failure(of: "echo refused"))
            #expect(failure.reason == .rejected)
            running.cancel()
            _ = await running.failure()
            #expect(try await queued.text() == "queued")
            #expect(try await two.submit("echo accepted") == Array("accepted".utf8))
            try await one.close()
            try await two.close()
        }
        try await server.stop()
    }
}
