import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Logging
import NIOCore
import Testing

@testable import AiotaskWorker

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

@Suite("Task timeouts")
struct TimeoutTests {
    @Test("the server's default timeout fails a task that runs too long with timedOut")
    func serverDefault() async throws {
        let worker = try await TestServer.start(handler: .builtin("chaos"), workers: 1) {
            $0.defaultTaskTimeout = .milliseconds(500)
        }
        try await withTimeout(.seconds(10)) {
            let client = try await worker.client()
            let started = ContinuousClock.now
            let failure = try #require(try await client.failure(of: "sleep 60000"))
            #expect(failure.reason == .timedOut)
            #expect(failure.message.contains("timeout"), "\(failure.message)")
            #expect(ContinuousClock.now - started >= .milliseconds(500))
            // A task within the timeout is not touched, and the pool serves on.
            #expect(try await client.submit("sleep 10") == Array("slept 10".utf8))
            try await client.close()
        }
        try await worker.stop()
    }

    @Test("a client's timeout overrides a larger server default")
    func clientOverridesLargerDefault() async throws {
        let worker = try await TestServer.start(handler: .builtin("chaos"), workers: 1) {
            $0.defaultTaskTimeout = .seconds(30)
        }
        try await withTimeout(.seconds(10)) {
            let client = try await worker.client()
            let failure = try #require(try await client.failure(of: "sleep 60000", timeout: .milliseconds(200)))
            #expect(failure.reason == .timedOut)
            try await client.close()
        }
        try await worker.stop()
    }

    @Test("a client's timeout applies where the server has none")
    func clientTimeoutWithoutDefault() async throws {
        let worker = try await TestServer.start(handler: .builtin("chaos"), workers: 1) {
            $0.defaultTaskTimeout = nil
        }
        try await withTimeout(.seconds(10)) {
            let client = try await worker.client()
            let failure = try #require(try await client.failure(of: "sleep 60000", timeout: .milliseconds(200)))
            #expect(failure.reason == .timedOut)
            // The timeout is per task: the next one, without, runs past it.
            #expect(try await client.submit("sleep 400") == Array("slept 400".utf8))
            try await client.close()
        }
        try await worker.stop()
    }

    @Test("a timed-out process that ignores SIGTERM is killed with SIGKILL after the grace period")
    func sigkillAfterGrace() async throws {
        let worker = try await TestServer.start(handler: .builtin("chaos"), workers: 1) {
            $0.killGracePeriod = .milliseconds(200)
        }
        let survivors = Survivors()
        defer { survivors.kill() }
        try await withTimeout(.seconds(10)) {
            let client = try await worker.client()
            let pid = try await client.workerPID()
            let process = try ProcessDeathWatch(pid: pid)
            survivors.add([process])

            let failure = try #require(try await client.failure(of: "hang", timeout: .milliseconds(200)))
            #expect(failure.reason == .timedOut)
            #expect(await process.waitForExit(limit: .seconds(5)), "process \(pid) outlived its SIGKILL")
            let exit = await worker.logs.first {
                $0.message.hasPrefix("retired worker process") && TestServer.workerPID(of: $0) == pid
            }
            #expect(exit.message.contains("SIGKILL"), "\(exit.message)")

            #expect(try await client.workerPID() != pid)
            try await client.close()
        }
        try await worker.stop()
    }

    @Test("a timeout kills the whole process group, so a handler's own child dies too")
    func processGroupKilled() async throws {
        let worker = try await TestServer.start(handler: .builtin("chaos"), workers: 1) {
            $0.killGracePeriod = .milliseconds(200)
        }
        let survivors = Survivors()
        defer { survivors.kill() }
        try await withTimeout(.seconds(10)) {
            let client = try await worker.client()
            let task = try await client.enqueue("orphan", timeout: .seconds(3))

            let line = await worker.logs.first { $0.message.hasPrefix("orphan pid ") }
            let orphanPID = try #require(pid_t(line.message.dropFirst("orphan pid ".count)))
            let workerPID = try #require(TestServer.workerPID(of: line))
            let orphan = try ProcessDeathWatch(pid: orphanPID)
            survivors.add([orphan])
            #expect(orphan.isAlive)
            #expect(getpgid(orphanPID) == workerPID, "the child is not in its pool process's group")

            let failure = try #require(await task.failure())
            #expect(failure.reason == .timedOut)
            #expect(
                await orphan.waitForExit(limit: .seconds(5)),
                "the handler's child \(orphanPID) outlived the timeout"
            )
            try await client.close()
        }
        try await worker.stop()
    }
}
