import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation
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

    /// A handler program that answers `pid` with its pid and hangs on any other task. On SIGTERM it writes
    /// `TERM <monotonic seconds>` to the file `term` next to it, then exits with code 0, or (`staysOnTerm`) stays,
    /// appending the time every 10 ms until it is killed.
    static func termTrap(staysOnTerm: Bool) throws -> HandlerScript {
        try HandlerScript(
            """
            import os
            import signal
            import time

            marker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "term")


            def on_term(number, frame):
                with open(marker, "a") as file:
                    file.write(f"TERM {time.monotonic()}\\n")
                if not \(staysOnTerm ? "True" : "False"):
                    os._exit(0)
                while True:
                    time.sleep(0.01)
                    with open(marker, "a") as file:
                        file.write(f"alive {time.monotonic()}\\n")


            signal.signal(signal.SIGTERM, on_term)
            for task in tasks():
                if task == b"pid":
                    reply(0, str(os.getpid()).encode())
                else:
                    while True:
                        time.sleep(3600)
            """
        )
    }

    @Test(
        "a timed-out handler program gets SIGTERM first: it traps it, leaves its marker and exits within the kill grace"
    )
    func sigtermReachesHandlerProgram() async throws {
        let script = try Self.termTrap(staysOnTerm: false)
        defer { script.remove() }
        // A grace far longer than the test waits: only SIGTERM can end the process in time.
        let worker = try await TestServer.start(handler: script.command, workers: 1) {
            $0.killGracePeriod = .seconds(120 * testSlowdown)
        }
        let survivors = Survivors()
        defer { survivors.kill() }
        try await withTimeout(.seconds(20)) {
            let client = try await worker.client()
            let pid = try #require(pid_t(String(decoding: try await client.submit("pid"), as: UTF8.self)))
            let process = try ProcessDeathWatch(pid: pid)
            survivors.add([process])

            let failure = try #require(try await client.failure(of: "hang", timeout: .milliseconds(200)))
            #expect(failure.reason == .timedOut)
            #expect(
                await process.waitForExit(limit: .seconds(10 * testSlowdown)),
                "process \(pid) did not act on SIGTERM"
            )
            let marker = try String(contentsOfFile: script.directory + "/term", encoding: .utf8)
            #expect(marker.hasPrefix("TERM "), "\(marker)")
            let exit = await worker.logs.first {
                $0.message.hasPrefix("retired worker process") && TestServer.workerPID(of: $0) == pid
            }
            #expect(exit.message.contains("exited with code 0"), "\(exit.message)")
            try await client.close()
        }
        try await worker.stop()
    }

    @Test("a timed-out handler program that traps SIGTERM and stays is killed with SIGKILL only after the kill grace")
    func sigkillOnlyAfterGrace() async throws {
        let script = try Self.termTrap(staysOnTerm: true)
        defer { script.remove() }
        let grace = Duration.seconds(1)
        let worker = try await TestServer.start(handler: script.command, workers: 1) {
            $0.killGracePeriod = grace
        }
        let survivors = Survivors()
        defer { survivors.kill() }
        try await withTimeout(.seconds(20)) {
            let client = try await worker.client()
            let pid = try #require(pid_t(String(decoding: try await client.submit("pid"), as: UTF8.self)))
            let process = try ProcessDeathWatch(pid: pid)
            survivors.add([process])

            let failure = try #require(try await client.failure(of: "hang", timeout: .milliseconds(200)))
            #expect(failure.reason == .timedOut)
            #expect(await process.waitForExit(limit: .seconds(10 * testSlowdown)), "process \(pid) outlived SIGKILL")
            let exit = await worker.logs.first {
                $0.message.hasPrefix("retired worker process") && TestServer.workerPID(of: $0) == pid
            }
            #expect(exit.message.contains("SIGKILL"), "\(exit.message)")

            // SIGTERM came first (the process wrote its marker), and the process lived on, by its own clock, for
            // most of the grace before SIGKILL ended it (heartbeats can lag on a loaded machine: half is asked).
            let lines = try String(contentsOfFile: script.directory + "/term", encoding: .utf8).split(separator: "\n")
            let stamps = lines.compactMap { $0.split(separator: " ").last.flatMap { Double($0) } }
            #expect(lines.first?.hasPrefix("TERM ") == true, "\(lines.prefix(3))")
            #expect(lines.count == stamps.count)
            let livedAfterTerm = (stamps.last ?? 0) - (stamps.first ?? 0)
            #expect(livedAfterTerm >= 0.5, "the process lived \(livedAfterTerm) s after SIGTERM; the grace is \(grace)")
            try await client.close()
        }
        try await worker.stop()
    }

    @Test("a timed-out Swift-handler process acts on SIGTERM: it dies of it within the kill grace")
    func sigtermReachesSwiftHandler() async throws {
        let worker = try await TestServer.start(handler: .builtin("chaos"), workers: 1) {
            $0.killGracePeriod = .seconds(120 * testSlowdown)
        }
        let survivors = Survivors()
        defer { survivors.kill() }
        try await withTimeout(.seconds(20)) {
            let client = try await worker.client()
            let pid = try await client.workerPID()
            let process = try ProcessDeathWatch(pid: pid)
            survivors.add([process])

            let failure = try #require(try await client.failure(of: "sleep 600000", timeout: .milliseconds(200)))
            #expect(failure.reason == .timedOut)
            #expect(
                await process.waitForExit(limit: .seconds(10 * testSlowdown)),
                "process \(pid) did not act on SIGTERM"
            )
            let exit = await worker.logs.first {
                $0.message.hasPrefix("retired worker process") && TestServer.workerPID(of: $0) == pid
            }
            #expect(exit.message.contains("SIGTERM"), "\(exit.message)")
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
