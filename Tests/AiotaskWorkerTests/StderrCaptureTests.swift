import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import Logging
import NIOCore
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

@Suite("Capture of pool processes' stderr")
struct StderrCaptureTests {
    @Test("a line a handler writes to stderr is logged with the pid of its process")
    func lineLoggedWithPID() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1)
        try await withTimeout(.seconds(10)) {
            let client = try await server.client()
            let pid = try await client.workerPID()
            #expect(try await client.submit("stderr hello-marker") == Array("logged".utf8))
            let entry = await server.logs.first { $0.message == "hello-marker" }
            #expect(TestServer.workerPID(of: entry) == pid)
            #expect(entry.level == .notice)
            try await client.close()
        }
        try await server.stop()
    }

    @Test("each process's lines carry its own pid")
    func linesOfSeveralProcesses() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1) {
            $0.maximumTasksPerProcess = 2
        }
        try await withTimeout(.seconds(10)) {
            let client = try await server.client()
            let first = try await client.workerPID()
            _ = try await client.submit("stderr from-first")
            let second = try await client.workerPID()
            _ = try await client.submit("stderr from-second")
            #expect(first != second)
            let one = await server.logs.first { $0.message == "from-first" }
            let two = await server.logs.first { $0.message == "from-second" }
            #expect(TestServer.workerPID(of: one) == first)
            #expect(TestServer.workerPID(of: two) == second)
            try await client.close()
        }
        try await server.stop()
    }

    @Test("1 MiB of stderr without a newline is logged in lines of at most 4,096 bytes that add up to all of it")
    func longLinesCutIntoPieces() async throws {
        // 1 MiB of `y`, then 1 MiB of `€` (3 bytes each, so 4,096-byte cuts would split characters), each ended by
        // a newline only at its end, then a marker line.
        let characters = (1 << 20) / 3 + 1
        let script = try HandlerScript(
            """
            for task in tasks():
                sys.stderr.buffer.write(b"y" * (1 << 20) + b"\\n")
                sys.stderr.buffer.write("€".encode() * \(characters) + b"\\nflood-done\\n")
                sys.stderr.buffer.flush()
                reply(0, b"flooded")
            """
        )
        defer { script.remove() }
        let server = try await TestServer.start(handler: script.command, workers: 1)
        try await withTimeout {
            let client = try await server.client()
            #expect(try await client.submit("flood") == Array("flooded".utf8))
            let done = await server.logs.first { $0.message == "flood-done" }
            let pid = try #require(TestServer.workerPID(of: done))
            // The process's stderr lines (notices), not the supervisor's own entries about it.
            let lines = server.logs.entries.filter {
                TestServer.workerPID(of: $0) == pid && $0.level == .notice && $0.message != "flood-done"
            }
            let lengths = lines.map(\.message.utf8.count)
            #expect(lengths.allSatisfy { $0 <= StderrLineReader.maximumLineLength }, "longest: \(lengths.max() ?? 0)")
            let ys = lines.filter { $0.message.first == "y" }
            let euros = lines.filter { $0.message.first == "€" }
            let others = lines.filter { $0.message.first != "y" && $0.message.first != "€" }
            #expect(others.isEmpty, "\(others.map { "\($0.level) \($0.message.prefix(80))" })")
            #expect(ys.reduce(0) { $0 + $1.message.utf8.count } == 1 << 20)
            #expect(euros.reduce(0) { $0 + $1.message.utf8.count } == 3 * characters)
            #expect(euros.allSatisfy { $0.message.allSatisfy { $0 == "€" } }, "a character was cut in two")
            try await client.close()
        }
        try await server.stop()
    }

    @Test("a 1.2 MB handler error is cut to 4 KiB in the FAILED frame and in the log line")
    func longErrorCutInLog() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1)
        try await withTimeout {
            let client = try await server.client()
            let message = String(repeating: "e", count: 1_200_000)
            let failure = try #require(try await client.failure(of: "fail \(message)"))
            #expect(failure.reason == .handlerError)
            #expect(failure.message.utf8.count <= 4096)
            let logged = await server.logs.first { $0.message.hasPrefix("task failed: ") }
            // `task failed: REASON: MESSAGE`: the handler's message is cut as in the frame.
            let loggedMessage = logged.message.components(separatedBy: ": ").dropFirst(2).joined(separator: ": ")
            #expect(loggedMessage.utf8.count <= 4096, "\(logged.message.utf8.count) bytes")
            #expect(logged.message.hasSuffix("(1200000 bytes in all)"), "\(logged.message.suffix(40))")
            try await client.close()
        }
        try await server.stop()
    }
}
