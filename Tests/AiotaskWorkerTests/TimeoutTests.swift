import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import Logging
import NIOCore
import Testing

@testable import AiotaskServer
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
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1) {
            $0.defaultTaskTimeout = .milliseconds(500)
        }
        try await withTimeout(.seconds(10)) {
            let client = try await server.client()
            // It runs first, then fails on the server's timeout, which its message names.
            let task = try await client.enqueue("sleep 60000")
            _ = try await client.waitForInfo { $0.tasks.running == 1 }
            let failure = try #require(await task.failure())
            #expect(failure.reason == .timedOut)
            #expect(failure.message == "task exceeded its timeout of 0.5 seconds", "\(failure.message)")
            // A task within the timeout is not touched, and the pool serves on.
            #expect(try await client.submit("sleep 10") == Array("slept 10".utf8))
            try await client.close()
        }
        try await server.stop()
    }

    @Test("a client's timeout overrides a larger server default")
    func clientOverridesLargerDefault() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1) {
            $0.defaultTaskTimeout = .seconds(30)
        }
        try await withTimeout(.seconds(10)) {
            let client = try await server.client()
            let failure = try #require(try await client.failure(of: "sleep 60000", timeout: .milliseconds(200)))
            #expect(failure.reason == .timedOut)
            try await client.close()
        }
        try await server.stop()
    }

    @Test("a client's timeout applies where the server has none")
    func clientTimeoutWithoutDefault() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1) {
            $0.defaultTaskTimeout = nil
        }
        try await withTimeout(.seconds(10)) {
            let client = try await server.client()
            let failure = try #require(try await client.failure(of: "sleep 60000", timeout: .milliseconds(200)))
            #expect(failure.reason == .timedOut)
            // The timeout is per task: the next one, without, runs past it.
            #expect(try await client.submit("sleep 400") == Array("slept 400".utf8))
            try await client.close()
        }
        try await server.stop()
    }

    @Test("a timed-out process that ignores SIGTERM is killed with SIGKILL after the grace period")
    func sigkillAfterGrace() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1) {
            $0.killGracePeriod = .milliseconds(200)
        }
        let survivors = Survivors()
        defer { survivors.kill() }
        try await withTimeout(.seconds(10)) {
            let client = try await server.client()
            let pid = try await client.workerPID()
            let process = try ProcessDeathWatch(pid: pid)
            survivors.add([process])

            let failure = try #require(try await client.failure(of: "hang", timeout: .milliseconds(200)))
            #expect(failure.reason == .timedOut)
            #expect(await process.waitForExit(limit: .seconds(5)), "process \(pid) outlived its SIGKILL")
            let exit = await server.logs.first {
                $0.message.hasPrefix("retired pool process") && TestServer.workerPID(of: $0) == pid
            }
            #expect(exit.message.contains("SIGKILL"), "\(exit.message)")

            #expect(try await client.workerPID() != pid)
            try await client.close()
        }
        try await server.stop()
    }

    @Test(
        "the process replacing a timed-out one that ignores SIGTERM starts only once that one is dead: two live processes never share an AIOTASK_WORKER_INDEX"
    )
    func replacementWaitsForPredecessor() async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // Each process, as it starts, looks for a live process that registered its index before it.
        let script = try HandlerScript(
            """
            import os
            import signal
            import time

            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            index = os.environ["AIOTASK_WORKER_INDEX"]


            def alive(pid):
                try:
                    with open(f"/proc/{pid}/stat") as stat:
                        return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
                except OSError:
                    return False


            try:
                registered = open("\(directory)/registry").read().split()
            except FileNotFoundError:
                registered = []
            for at in range(0, len(registered), 2):
                if registered[at] == index and alive(int(registered[at + 1])):
                    open("\(directory)/overlaps", "a").write(f"{index}: {registered[at + 1]} and {os.getpid()}\\n")
            open("\(directory)/registry", "a").write(f"{index} {os.getpid()}\\n")

            for task in tasks():
                if task == b"pid":
                    reply(0, str(os.getpid()).encode())
                else:
                    time.sleep(int(task) / 1000)
                    reply(0, task)
            """
        )
        defer { script.remove() }
        let server = try await TestServer.start(handler: script.command, workers: 1) {
            $0.killGracePeriod = .seconds(1) * testSlowdown
        }
        try await withTimeout(.seconds(30)) {
            let client = try await server.client()
            let first = try #require(pid_t(String(decoding: try await client.submit("pid"), as: UTF8.self)))
            #expect(try await client.failure(of: "60000", timeout: .milliseconds(100))?.reason == .timedOut)
            let second = try #require(pid_t(String(decoding: try await client.submit("pid"), as: UTF8.self)))
            #expect(second != first)
            try await client.close()
        }
        try await server.stop()
        let overlaps = (try? String(contentsOfFile: directory + "/overlaps", encoding: .utf8)) ?? ""
        #expect(overlaps.isEmpty, "processes started while one with their index was alive: \(overlaps)")
        let registered = try String(contentsOfFile: directory + "/registry", encoding: .utf8)
        #expect(registered.split(separator: "\n").count == 2, "\(registered)")
    }

    @Test("a timeout kills the whole process group, so a handler's own child dies too")
    func processGroupKilled() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1) {
            $0.killGracePeriod = .milliseconds(200)
        }
        let survivors = Survivors()
        defer { survivors.kill() }
        try await withTimeout(.seconds(10)) {
            let client = try await server.client()
            let task = try await client.enqueue("orphan", timeout: .seconds(3))

            let line = await server.logs.first { $0.message.hasPrefix("orphan pid ") }
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
        try await server.stop()
    }
}
