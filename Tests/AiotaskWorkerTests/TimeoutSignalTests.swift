import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// SIGTERM comes first and reaches the handler; SIGKILL follows only after the kill grace.
extension TimeoutTests {
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
        let server = try await TestServer.start(handler: script.command, workers: 1) {
            $0.killGracePeriod = .seconds(120 * testSlowdown)
        }
        let survivors = Survivors()
        defer { survivors.kill() }
        try await withTimeout(.seconds(20)) {
            let client = try await server.client()
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
            let exit = await server.logs.first {
                $0.message.hasPrefix("retired pool process") && TestServer.workerPID(of: $0) == pid
            }
            #expect(exit.message.contains("exited with code 0"), "\(exit.message)")
            try await client.close()
        }
        try await server.stop()
    }

    @Test("a timed-out handler program that traps SIGTERM and stays is killed with SIGKILL only after the kill grace")
    func sigkillOnlyAfterGrace() async throws {
        let script = try Self.termTrap(staysOnTerm: true)
        defer { script.remove() }
        let grace = Duration.seconds(1)
        let server = try await TestServer.start(handler: script.command, workers: 1) {
            $0.killGracePeriod = grace
        }
        let survivors = Survivors()
        defer { survivors.kill() }
        try await withTimeout(.seconds(20)) {
            let client = try await server.client()
            let pid = try #require(pid_t(String(decoding: try await client.submit("pid"), as: UTF8.self)))
            let process = try ProcessDeathWatch(pid: pid)
            survivors.add([process])

            let failure = try #require(try await client.failure(of: "hang", timeout: .milliseconds(200)))
            #expect(failure.reason == .timedOut)
            #expect(await process.waitForExit(limit: .seconds(10 * testSlowdown)), "process \(pid) outlived SIGKILL")
            let exit = await server.logs.first {
                $0.message.hasPrefix("retired pool process") && TestServer.workerPID(of: $0) == pid
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
        try await server.stop()
    }

    @Test("a timed-out Swift-handler process acts on SIGTERM: it dies of it within the kill grace")
    func sigtermReachesSwiftHandler() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1) {
            $0.killGracePeriod = .seconds(120 * testSlowdown)
        }
        let survivors = Survivors()
        defer { survivors.kill() }
        try await withTimeout(.seconds(20)) {
            let client = try await server.client()
            let pid = try await client.workerPID()
            let process = try ProcessDeathWatch(pid: pid)
            survivors.add([process])

            let failure = try #require(try await client.failure(of: "sleep 600000", timeout: .milliseconds(200)))
            #expect(failure.reason == .timedOut)
            #expect(
                await process.waitForExit(limit: .seconds(10 * testSlowdown)),
                "process \(pid) did not act on SIGTERM"
            )
            let exit = await server.logs.first {
                $0.message.hasPrefix("retired pool process") && TestServer.workerPID(of: $0) == pid
            }
            #expect(exit.message.contains("SIGTERM"), "\(exit.message)")
            try await client.close()
        }
        try await server.stop()
    }
}
