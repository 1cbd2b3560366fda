import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import NIOCore
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

@Suite("Cancelling tasks")
struct CancellationTests {
    @Test("cancelling a running task fails it with cancelled and replaces its process")
    func running() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1)
        try await withTimeout(.seconds(10)) {
            let client = try await server.client()
            let pid = try await client.workerPID()
            let process = try ProcessDeathWatch(pid: pid)
            let restarts = try await client.serverInfo().workers.restarts

            let task = try await client.enqueue("sleep 60000")
            #expect(try await task.status() == .processing)
            task.cancel()
            let failure = try #require(await task.failure())
            #expect(failure.reason == .cancelled)

            #expect(await process.waitForExit(limit: .seconds(5)), "the cancelled task's process \(pid) lives on")
            try await server.waitForFullPool()
            #expect(try await client.serverInfo().workers.restarts == restarts + 1)
            #expect(try await client.workerPID() != pid)
            try await client.close()
        }
        try await server.stop()
    }

    @Test("a cancelled queued task never runs, and the task behind it does")
    func queued() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1)
        try await withTimeout(.seconds(10)) {
            let client = try await server.client()
            let restarts = try await client.serverInfo().workers.restarts
            let running = try await client.enqueue("sleep 60000")
            let cancelled = try await client.enqueue("stderr cancelled-task-ran")
            let next = try await client.enqueue("stderr next-task-ran")
            #expect(try await cancelled.status() == .inQueue)
            #expect(try await client.serverInfo().queue.length == 2)

            cancelled.cancel()
            let failure = try #require(await cancelled.failure())
            #expect(failure.reason == .cancelled)
            #expect(try await client.serverInfo().queue.length == 1)

            running.cancel()
            #expect(await running.failure()?.reason == .cancelled)
            #expect(try await next.text() == "logged")
            // The pool's one process would have run the cancelled task just before the next one, writing to the
            // same stderr: its line would have been logged before this one.
            _ = await server.logs.first { $0.message == "next-task-ran" }
            #expect(!server.logs.entries.contains { $0.message == "cancelled-task-ran" })
            // Only the running task's cancellation cost a process.
            #expect(try await client.serverInfo().workers.restarts == restarts + 1)
            try await client.close()
        }
        try await server.stop()
    }

    @Test("cancelling a finished task changes nothing")
    func finished() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1)
        try await withTimeout(.seconds(10)) {
            let client = try await server.client()
            let pid = try await client.workerPID()
            let task = try await client.enqueue("echo done")
            #expect(try await task.text() == "done")
            task.cancel()
            #expect(try await task.text() == "done")
            #expect(try await task.status() == .done)
            #expect(try await client.workerPID() == pid)
            try await client.close()
        }
        try await server.stop()
    }
}
