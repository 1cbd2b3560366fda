import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Logging
import NIOCore
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

@Suite("Crashing pool processes")
struct CrashTests {
    @Test("a process that exits fails its task with workerCrashed naming the exit code, and is replaced")
    func exitCode() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 2)
        try await withTimeout {
            let client = try await server.client()
            let bystander = try await client.enqueue("sleep 500")
            let failure = try #require(try await client.failure(of: "exit 3"))
            #expect(failure.reason == .workerCrashed)
            #expect(failure.message.contains("exited with code 3"), "\(failure.message)")

            // The crash is logged with the pid of the process that died, which the failure names too.
            let crashedPID = try #require(Self.pid(in: failure.message))
            let logged = await server.logs.first { $0.message.contains("exited with code 3") }
            #expect(logged.level == .error)
            #expect(TestServer.workerPID(of: logged) == crashedPID)

            // The task running on the other process at the time is unaffected.
            #expect(try await bystander.text() == "slept 500")

            try await server.waitForFullPool()
            let info = try await server.server.info()
            #expect(info.workers.restarts >= 1)
            #expect(try await client.submit("echo after") == Array("after".utf8))
            #expect(try await client.workerPID() != crashedPID)
            try await client.close()
        }
        try await server.stop()
    }

    @Test(
        "a crash message gives the broken link's reason in parentheses, and no empty parentheses when there is none",
        arguments: [
            (nil, "pool process 42 exited with code 3"),
            ("", "pool process 42 exited with code 3"),
            (" ", "pool process 42 exited with code 3"),
            ("handler closed its stdout", "pool process 42 exited with code 3 (handler closed its stdout)"),
        ] as [(String?, String)]
    )
    func crashMessage(linkFailure: String?, expected: String) {
        #expect(PoolSlot.crashMessage(pid: 42, status: .exited(code: 3), linkFailure: linkFailure) == expected)
    }

    @Test("a process killed by a signal fails its task with workerCrashed naming the signal")
    func signal() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1)
        try await withTimeout {
            let client = try await server.client()
            let before = try await client.workerPID()
            let failure = try #require(try await client.failure(of: "signal 11"))
            #expect(failure.reason == .workerCrashed)
            #expect(failure.message.contains("SIGSEGV"), "\(failure.message)")
            #expect(failure.message.contains("\(before)"), "\(failure.message)")

            try await server.waitForFullPool()
            let after = try await client.workerPID()
            #expect(after != before)
            #expect(try await client.submit("echo still serving") == Array("still serving".utf8))
            try await client.close()
        }
        try await server.stop()
    }

    @Test("the pool recovers from crashes in a row, and the tasks after them succeed")
    func repeatedCrashes() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1) {
            $0.maximumRestartBackoff = .milliseconds(200)
        }
        try await withTimeout {
            let client = try await server.client()
            for code in 1...3 {
                let failure = try #require(try await client.failure(of: "exit \(code)"))
                #expect(failure.reason == .workerCrashed)
                #expect(failure.message.contains("exited with code \(code)"), "\(failure.message)")
            }
            // Queued behind the crashes, waiting out the backoff: still served.
            #expect(try await client.submit("echo recovered") == Array("recovered".utf8))
            try await server.waitForFullPool()
            #expect(try await server.server.info().workers.restarts >= 3)
            try await client.close()
        }
        try await server.stop()
    }

    @Test(
        "a task answered just before its process dies keeps its result: only the task the process was running fails"
    )
    func answeredBeforeDeath() async throws {
        // With tasks sent ahead, the process starts `exit 3` right after writing the reply to the task before it:
        // that reply must reach the supervisor, and be read, before the exit is taken as a crash.
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1) { $0.prefetch = 2 }
        try await withTimeout {
            let client = try await server.client()
            // A large reply takes the supervisor several reads, so the exit is seen before the reply is all read.
            let large = String(repeating: "x", count: 512 * 1024)
            for round in 0..<20 {
                let before = try await client.enqueue("echo \(round) \(large)")
                let crash = try await client.enqueue("exit 3")
                let after = try await client.enqueue("echo after \(round)")
                #expect(try await before.text() == "\(round) \(large)")
                let failure = await crash.failure()
                #expect(failure?.reason == .workerCrashed)
                #expect(failure?.message.contains("exited with code 3") == true, "\(String(describing: failure))")
                #expect(try await after.text() == "after \(round)")
            }
            try await client.close()
        }
        try await server.stop()
    }

    @Test(
        "restarts back off exponentially while crashes go on, up to the maximum",
        arguments: [
            (0, 0), (1, 0), (2, 100), (3, 200), (4, 400), (5, 800), (6, 1600), (7, 3000), (50, 3000), (Int.max, 3000),
        ]
    )
    func backoff(crashes: Int, milliseconds: Int) {
        #expect(PoolSlot.backoff(crashes: crashes, maximum: .seconds(3)) == .milliseconds(milliseconds))
    }

    /// The pid in a failure message such as `pool process 1234 exited with code 3`.
    static func pid(in message: String) -> Int32? {
        let words = message.split(separator: " ")
        guard let index = words.firstIndex(of: "process"), index + 1 < words.count else { return nil }
        return Int32(words[index + 1])
    }
}
