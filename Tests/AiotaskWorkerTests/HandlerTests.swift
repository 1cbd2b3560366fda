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

/// Every kind of handler answers tasks: aiotaskd's built-ins, a program in another language, and a Swift closure.
@Suite("Handlers")
struct HandlerTests {
    @Test("echo returns the task unchanged, including empty and binary tasks")
    func echo() async throws {
        let server = try await TestServer.start(handler: .builtin("echo"), workers: 1)
        try await withTimeout {
            let client = try await server.client()
            #expect(try await client.submit([UInt8]()) == [])
            let binary: [UInt8] = [0, 255, 0x80, 10, 13, 0]
            #expect(try await client.submit(binary) == binary)
            try await client.close()
        }
        try await server.stop()
    }

    @Test("sha256 returns the hex digest of the task")
    func sha256() async throws {
        let server = try await TestServer.start(handler: .builtin("sha256"), workers: 1)
        try await withTimeout {
            let client = try await server.client()
            let abc = try await client.submit("abc")
            #expect(
                String(decoding: abc, as: UTF8.self)
                    == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
            )
            let empty = try await client.submit([UInt8]())
            #expect(
                String(decoding: empty, as: UTF8.self)
                    == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            )
            try await client.close()
        }
        try await server.stop()
    }

    @Test("sleep waits the given milliseconds, then echoes; a bad number is a handler error")
    func sleep() async throws {
        let server = try await TestServer.start(handler: .builtin("sleep"), workers: 2)
        try await withTimeout {
            let client = try await server.client()
            // Side by side, a short sleep answers while a long one still runs: each waits its own time.
            let long = try await client.enqueue("60000")
            _ = try await client.waitForInfo { $0.tasks.running == 1 }
            #expect(try await client.submit("20") == Array("20".utf8))
            #expect(try await long.status() == .processing)
            long.cancel()
            #expect(await long.failure()?.reason == .cancelled)
            let failure = try await #require(throws: TaskFailure.self) { try await client.submit("soon") }
            #expect(failure.reason == .handlerError)
            #expect(failure.message.contains("expected a whole number of milliseconds"))
            try await client.close()
        }
        try await server.stop()
    }

    @Test("burn keeps a CPU busy for the given milliseconds and returns")
    func burn() async throws {
        let server = try await TestServer.start(handler: .builtin("burn"), workers: 1)
        try await withTimeout {
            let client = try await server.client()
            let result = String(decoding: try await client.submit("30"), as: UTF8.self)
            #expect(result.hasPrefix("burned 30 ms ("))
            try await client.close()
        }
        try await server.stop()
    }

    @Test("fail fails every task with its text as the message")
    func fail() async throws {
        let server = try await TestServer.start(handler: .builtin("fail"), workers: 1)
        try await withTimeout {
            let client = try await server.client()
            let failure = try await #require(throws: TaskFailure.self) { try await client.submit("it broke") }
            #expect(failure.reason == .handlerError)
            #expect(failure.message == "it broke")
            try await client.close()
        }
        try await server.stop()
    }

    @Test("a handler error longer than a control frame allows is cut short, and the connection carries on")
    func longErrorMessage() async throws {
        let server = try await TestServer.start(handler: .builtin("fail"), workers: 1)
        try await withTimeout {
            let client = try await server.client()
            // 3-byte characters, so that a cut at a fixed byte count would split one.
            let text = String(repeating: "€", count: 40_000)
            let failure = try await #require(throws: TaskFailure.self) { try await client.submit(text) }
            #expect(failure.reason == .handlerError)
            #expect(failure.message.utf8.count <= ConnectionHandler.failureMessageLimit)
            #expect(failure.message.utf8.count > 3_000)
            #expect(!failure.message.contains("\u{FFFD}"))
            let kept = failure.message.prefix { $0 == "€" }
            #expect(kept.count > 900)
            #expect(failure.message.hasSuffix("(120000 bytes in all)"))
            // The FAILED frame fit the client's limit, so the connection is still up.
            let next = try await #require(throws: TaskFailure.self) { try await client.submit("short") }
            #expect(next.message == "short")
            try await client.close()
        }
        try await server.stop()
    }

    @Test("truncating a message keeps short ones and cuts long ones at a scalar boundary")
    func truncation() {
        #expect(ConnectionHandler.truncated("short", toUTF8Count: 4096) == "short")
        let exact = String(repeating: "a", count: 4096)
        #expect(ConnectionHandler.truncated(exact, toUTF8Count: 4096) == exact)
        for filler in ["a", "é", "€", "🙂"] {
            let long = String(repeating: filler, count: 5000)
            let cut = ConnectionHandler.truncated(long, toUTF8Count: 4096)
            #expect(cut.utf8.count <= 4096)
            #expect(cut.hasSuffix("… (\(long.utf8.count) bytes in all)"))
            #expect(long.hasPrefix(cut.prefix { String($0) == filler }))
            #expect(cut.utf8.count > 4096 - 4 - "… (\(long.utf8.count) bytes in all)".utf8.count)
        }
    }

    @Test("the Python example handler upper-cases tasks and reports fail:MESSAGE as a handler error")
    func pythonExample() async throws {
        let program = Products.repositoryRoot + "/Examples/handlers/python/uppercase.py"
        let server = try await TestServer.start(handler: .program(program), workers: 1)
        try await withTimeout {
            let client = try await server.client()
            #expect(try await client.submit("hello") == Array("HELLO".utf8))
            let failure = try await #require(throws: TaskFailure.self) { try await client.submit("fail:oops") }
            #expect(failure.reason == .handlerError)
            #expect(failure.message == "oops")
            #expect(try await client.submit("still up") == Array("STILL UP".utf8))
            try await client.close()
        }
        try await server.stop()
    }

    @Test("a handler that writes garbage to stdout fails its task as a crash, and the pool recovers")
    func garbageOnStdout() async throws {
        let script = try HandlerScript(
            """
            for task in tasks():
                if task == b"garbage":
                    stdout.write(b"this is not a reply\\n")
                    stdout.flush()
                else:
                    reply(0, task[::-1])
            """
        )
        defer { script.remove() }
        let server = try await TestServer.start(handler: script.command, workers: 1)
        try await withTimeout {
            let client = try await server.client()
            #expect(try await client.submit("abc") == Array("cba".utf8))
            let failure = try await #require(throws: TaskFailure.self) { try await client.submit("garbage") }
            #expect(failure.reason == .workerCrashed)
            #expect(failure.message.contains("framing"))
            let logged = await server.logs.first { $0.message.contains("broke its link") }
            #expect(logged.level == .error)
            #expect(try await client.submit("recovered") == Array("derevocer".utf8))
            try await client.close()
        }
        try await server.stop()
    }

    @Test("a handler program and the processes it starts begin with no signal blocked and none ignored")
    func signalsAtDefaults() async throws {
        // Python itself ignores SIGPIPE and SIGXFSZ, so only the handler's mask is read; its child (whose SIGPIPE
        // and SIGXFSZ `subprocess` puts back to their defaults) shows both what it inherited blocked and ignored.
        let script = try HandlerScript(
            """
            import subprocess


            def signal_lines(status):
                return [line for line in status.splitlines() if line.startswith(("SigBlk:", "SigIgn:"))]


            for task in tasks():
                own = [line for line in signal_lines(open("/proc/self/status").read()) if line.startswith("SigBlk:")]
                child = signal_lines(subprocess.run(["/bin/cat", "/proc/self/status"], capture_output=True, text=True).stdout)
                reply(0, "\\n".join(["handler " + line for line in own] + ["child " + line for line in child]).encode())
            """
        )
        defer { script.remove() }
        let server = try await TestServer.start(handler: script.command, workers: 1)
        try await withTimeout {
            let client = try await server.client()
            let lines = String(decoding: try await client.submit("status"), as: UTF8.self).split(separator: "\n")
            let masks = lines.map { $0.split(whereSeparator: { $0 == " " || $0 == "\t" }) }
            #expect(masks.map { "\($0[0]) \($0[1])" } == ["handler SigBlk:", "child SigBlk:", "child SigIgn:"])
            #expect(masks.allSatisfy { $0.last == "0000000000000000" }, "\(lines)")
            try await client.close()
        }
        try await server.stop()
    }

    @Test("a process a Swift handler starts with a plain posix_spawn inherits no blocked signal")
    func swiftHandlerChildSignals() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1) {
            $0.killGracePeriod = .milliseconds(100)
        }
        let survivors = Survivors()
        defer { survivors.kill() }
        try await withTimeout {
            let client = try await server.client()
            // `orphan` starts `sleep 3600` with posix_spawnp and no attributes, from the handler's thread.
            let task = try await client.enqueue("orphan", timeout: .seconds(30))
            let line = await server.logs.first { $0.message.hasPrefix("orphan pid ") }
            let pid = try #require(pid_t(line.message.dropFirst("orphan pid ".count)))
            survivors.add([try ProcessDeathWatch(pid: pid)])
            let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
            let blocked = status.split(separator: "\n").first { $0.hasPrefix("SigBlk:") }
            #expect(
                blocked?.split(whereSeparator: { $0 == "\t" || $0 == " " }).last == "0000000000000000",
                "\(blocked ?? "")"
            )
            task.cancel()
            try await client.close()
        }
        try await server.stop()
    }

    @Test("a handler program that does not exist makes the pool restart with backoff, and the server stays up")
    func missingProgram() async throws {
        let server = try await TestServer.start(handler: .program("/nonexistent/aiotask-handler"), workers: 1) {
            $0.maximumRestartBackoff = .milliseconds(400)
        }
        try await withTimeout {
            let reason = await server.logs.first { $0.message.contains("cannot execute handler program") }
            #expect(reason.message.contains("/nonexistent/aiotask-handler"))
            // Crashing again and again, the slot waits longer and longer before each restart.
            let firstWait = await server.logs.first { $0.message.hasPrefix("restarting pool process after") }
            let secondWait = await server.logs.first {
                $0.message.hasPrefix("restarting pool process after") && $0.message != firstWait.message
            }
            #expect(firstWait.level == .warning)
            #expect(secondWait.level == .warning)
            let client = try await server.client()
            let info = try await client.serverInfo()
            #expect(info.workers.restarts >= 3)
            let handle = try await client.enqueue(ByteBuffer(string: "anything"))
            let failure = try await #require(throws: TaskFailure.self) { try await handle.result() }
            #expect(failure.reason == .workerCrashed)
            #expect(failure.message.contains("pool process"))
            // The server itself answers all along.
            #expect(try await client.serverInfo().workers.configured == 1)
            try await client.close()
        }
        try await server.stop()
    }

    @Test("the Swift example worker reverses words, reports non-text tasks, and exits 0 on SIGTERM")
    func swiftExampleWorker() async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let socket = directory + "/sock"
        let daemon = try SpawnedProcess.spawn(Products.exampleWorker, ["--listen", "unix:\(socket)", "--workers", "1"])
        do {
            try await daemon.waitForStandardError(containing: "ready")
            try await withTimeout {
                let client = try await AiotaskClient.connect(to: "unix:\(socket)")
                #expect(try await client.submit("hello brave new world") == Array("world new brave hello".utf8))
                let failure = try await #require(throws: TaskFailure.self) {
                    try await client.submit([0x68, 0x69, 0xff, 0xfe])
                }
                #expect(failure.reason == .handlerError)
                #expect(failure.message == "the task (4 bytes) is not UTF-8 text")
                let info = try await client.serverInfo()
                #expect(info.handler == "swift:aiotask-example-worker")
                try await client.close()
            }
            daemon.signal(SIGTERM)
            #expect(try await daemon.wait() == .exited(0), "stderr: \(daemon.standardError)")
            #expect(access(socket, F_OK) != 0, "the socket file is left behind")
        } catch {
            daemon.killGroup()
            throw error
        }
    }
}
