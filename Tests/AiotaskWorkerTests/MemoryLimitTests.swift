import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import Logging
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The per-process memory limit (`max-worker-rss`): enforced while a task runs, and checked after each task.
@Suite("Memory limit of pool processes")
struct MemoryLimitTests {
    /// 64 MiB; 128 under a sanitizer, whose shadow memory and runtime put a sanitized pool process (aiotaskd, with
    /// TLS linked in) near 64 MiB before any task. Every test here leaks or grows by far more (100, 150, 200 MiB).
    static let limit = (testSanitizer == nil ? 64 : 128) * ProcessMemory.mebibyte

    @Test("a process that grows past the limit while it runs a task is killed; the task fails naming the limit")
    func enforcedWhileRunning() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1) {
            $0.maximumProcessRSS = Self.limit
            $0.memoryCheckInterval = .milliseconds(20)
        }
        try await withTimeout {
            let client = try await server.client()
            let before = try await client.workerPID()
            let death = try ProcessDeathWatch(pid: before)
            // `hog` never answers: only the supervisor's reading of its memory ends it.
            let failure = try #require(try await client.failure(of: "hog 200"))
            #expect(failure.reason == .workerCrashed)
            #expect(
                failure.message.hasPrefix("pool process \(before) exceeded the memory limit: "),
                "\(failure.message)"
            )
            #expect(
                failure.message.hasSuffix(" MiB > \(Self.limit / ProcessMemory.mebibyte) MiB"),
                "\(failure.message)"
            )
            #expect(await death.waitForExit(limit: .seconds(10)), "the process over the limit is still alive")

            let logged = await server.logs.first { $0.metadata["message_id"] == LogMessageID.memoryLimitExceeded }
            #expect(logged.level == .error)
            #expect(TestServer.workerPID(of: logged) == before)

            // The pool carries on with a fresh process.
            try await server.waitForFullPool()
            #expect(try await client.workerPID() != before)
            #expect(try await client.submit("echo after") == Array("after".utf8))
            try await client.close()
        }
        try await server.stop()
    }

    @Test(
        "while a task runs, the processes its handler started count too: a child over the limit fails the task and dies"
    )
    func childrenCountWhileRunning() async throws {
        // The pool process stays small; the child it starts (which first waits for a byte, so that its pid is on
        // file before it grows) holds 150 MiB.
        let script = try HandlerScript(
            """
            import os
            import subprocess

            grow = "import sys, time; sys.stdin.read(1); x = bytearray(b'a') * (150 << 20); time.sleep(600)"
            for task in tasks():
                child = subprocess.Popen([sys.executable, "-c", grow], stdin=subprocess.PIPE)
                with open(os.path.join(os.path.dirname(__file__), "child.pid"), "w") as file:
                    file.write(str(child.pid))
                child.stdin.write(b"g")
                child.stdin.flush()
                child.wait()
                reply(0, b"the child ended")
            """
        )
        defer { script.remove() }
        let server = try await TestServer.start(handler: script.command, workers: 1) {
            $0.maximumProcessRSS = Self.limit
            $0.memoryCheckInterval = .milliseconds(20)
        }
        try await withTimeout {
            let client = try await server.client()
            let failure = try #require(try await client.failure(of: "grow", timeout: .seconds(15)))
            #expect(failure.reason == .workerCrashed)
            #expect(failure.message.contains(" with its children exceeded the memory limit: "), "\(failure.message)")
            #expect(
                failure.message.hasSuffix(" MiB > \(Self.limit / ProcessMemory.mebibyte) MiB"),
                "\(failure.message)"
            )

            // The child died with its process group.
            let recorded = try String(contentsOfFile: script.directory + "/child.pid", encoding: .utf8)
            let child = try #require(pid_t(recorded))
            // No process with its pid (ESRCH) means it is gone already; any other failure to watch fails the test.
            do {
                let watch = try ProcessDeathWatch(pid: child)
                #expect(
                    await watch.waitForExit(limit: .seconds(10) * testSlowdown),
                    "the child over the limit is still alive"
                )
            } catch let error as ProcessDeathWatch.WatchError where error.errno == ESRCH {}
            try await server.waitForFullPool()
            try await client.close()
        }
        try await server.stop()
    }

    @Test("a process left over the limit by a task keeps the task's result and is replaced before the next one")
    func checkedAfterEachTask() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1) {
            $0.maximumProcessRSS = Self.limit
            // No reading while a task runs: only the check after it can see the leak.
            $0.memoryCheckInterval = .seconds(3600)
        }
        try await withTimeout {
            let client = try await server.client()
            let first = try await client.workerPID()
            // Under the limit, the process serves on.
            #expect(try await client.submit("leak 4") == Array("leaked 4".utf8))
            #expect(try await client.workerPID() == first)

            #expect(try await client.submit("leak 100") == Array("leaked 100".utf8))
            let logged = await server.logs.first { $0.metadata["message_id"] == LogMessageID.memoryLimitExceeded }
            #expect(TestServer.workerPID(of: logged) == first)
            #expect(logged.message.contains("after a task"), "\(logged.message)")
            #expect(try await client.workerPID() != first)
            try await client.close()
        }
        try await server.stop()
    }

    @Test("without a limit, a process that leaks serves on")
    func noLimit() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1)
        try await withTimeout {
            let client = try await server.client()
            let first = try await client.workerPID()
            #expect(try await client.submit("leak 100") == Array("leaked 100".utf8))
            #expect(try await client.workerPID() == first)
            try await client.close()
        }
        try await server.stop()
    }

    @Test("the resident size is read from /proc/PID/stat only for a live child of the reader")
    func statParsing() {
        let parent: pid_t = 4242
        let line = "77 (odd) name)) S \(parent) 77 77 0 -1 4194560 1 0 0 0 3 1 0 0 20 0 1 0 100 200000 300 rest"
        let bytes = Array(line.utf8)
        #expect(ProcessMemory.residentBytes(parsingStat: bytes[...], parent: parent) == 300 * ProcessMemory.pageSize)
        #expect(ProcessMemory.residentBytes(parsingStat: bytes[...], parent: 1) == nil)
        let zombie = Array(line.utf8).map { $0 == UInt8(ascii: "S") ? UInt8(ascii: "Z") : $0 }
        #expect(ProcessMemory.residentBytes(parsingStat: zombie[...], parent: parent) == nil)
        #expect(ProcessMemory.residentBytes(parsingStat: Array("garbage".utf8)[...], parent: parent) == nil)
        #expect(ProcessMemory.mebibytesRoundedUp(ProcessMemory.mebibyte + 1) == 2)
    }
}
