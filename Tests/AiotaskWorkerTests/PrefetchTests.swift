import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Glibc
import NIOCore
import Testing

@testable import AiotaskWorker

/// One process, with one task sent ahead behind the running one.
private func prefetchingWorker() async throws -> TestServer {
    try await TestServer.start(handler: .builtin("chaos"), workers: 1) { $0.prefetch = 1 }
}

@Suite("Prefetch: tasks sent ahead to busy processes", .serialized)
struct PrefetchTests {
    @Test("a task sent ahead waits in the process's pipe, reports inQueue, and runs next on the same process")
    func runsNext() async throws {
        let worker = try await prefetchingWorker()
        try await withTimeout {
            let client = try await worker.client()
            let running = try await client.enqueue("sleep 300")
            _ = try await client.waitForInfo { $0.tasks.running == 1 }
            let ahead = try await client.enqueue("pid")
            #expect(try await ahead.status() == .inQueue)
            #expect(try await running.text() == "slept 300")
            let pid = try await ahead.text()
            #expect(try await client.workerPID() == pid_t(pid))
            try await client.close()
        }
        try await worker.stop()
    }

    @Test("when the process dies, only its running task fails; the task it had not started runs on another one")
    func crashRequeues() async throws {
        let worker = try await prefetchingWorker()
        try await withTimeout {
            let client = try await worker.client()
            let doomedPID = try await client.workerPID()
            let running = try await client.enqueue("sleep 60000")
            _ = try await client.waitForInfo { $0.tasks.running == 1 }
            let ahead = try await client.enqueue("pid")
            _ = try await client.waitForInfo { $0.queue.length == 1 }
            kill(doomedPID, SIGKILL)
            let failure = await running.failure()
            #expect(failure?.reason == .workerCrashed)
            #expect(failure?.message.contains("SIGKILL") == true)
            let ranOn = try #require(pid_t(try await ahead.text()))
            #expect(ranOn != doomedPID)
            try await client.close()
        }
        try await worker.stop()
    }

    @Test("a timed-out task's process is replaced, and the task sent ahead of it still gets its result")
    func timeoutRequeues() async throws {
        let worker = try await prefetchingWorker()
        try await withTimeout {
            let client = try await worker.client()
            let slow = try await client.enqueue("sleep 60000", timeout: .milliseconds(300))
            _ = try await client.waitForInfo { $0.tasks.running == 1 }
            let ahead = try await client.enqueue("echo after the timeout")
            #expect(await slow.failure()?.reason == .timedOut)
            #expect(try await ahead.text() == "after the timeout")
            try await client.close()
        }
        try await worker.stop()
    }

    @Test("cancelling a task sent ahead answers it at once; its process is replaced when it would start it")
    func cancelAhead() async throws {
        let worker = try await prefetchingWorker()
        try await withTimeout {
            let client = try await worker.client()
            let firstPID = try await client.workerPID()
            let running = try await client.enqueue("sleep 300")
            _ = try await client.waitForInfo { $0.tasks.running == 1 }
            let ahead = try await client.enqueue("echo never answered")
            ahead.cancel()
            #expect(await ahead.failure()?.reason == .cancelled)
            #expect(try await running.text() == "slept 300")
            try await worker.waitForFullPool()
            #expect(try await client.workerPID() != firstPID)
            try await client.close()
        }
        try await worker.stop()
    }
}
