import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Logging
import NIOCore
import Testing

@testable import AiotaskWorker

@Suite("Capture of pool processes' stderr")
struct StderrCaptureTests {
    @Test("a line a handler writes to stderr is logged with the pid of its process")
    func lineLoggedWithPID() async throws {
        let worker = try await TestServer.start(handler: .builtin("chaos"), workers: 1)
        try await withTimeout(.seconds(10)) {
            let client = try await worker.client()
            let pid = try await client.workerPID()
            #expect(try await client.submit("stderr hello-marker") == Array("logged".utf8))
            let entry = await worker.logs.first { $0.message == "hello-marker" }
            #expect(TestServer.workerPID(of: entry) == pid)
            #expect(entry.level == .notice)
            try await client.close()
        }
        try await worker.stop()
    }

    @Test("each process's lines carry its own pid")
    func linesOfSeveralProcesses() async throws {
        let worker = try await TestServer.start(handler: .builtin("chaos"), workers: 1) {
            $0.maximumTasksPerProcess = 2
        }
        try await withTimeout(.seconds(10)) {
            let client = try await worker.client()
            let first = try await client.workerPID()
            _ = try await client.submit("stderr from-first")
            let second = try await client.workerPID()
            _ = try await client.submit("stderr from-second")
            #expect(first != second)
            let one = await worker.logs.first { $0.message == "from-first" }
            let two = await worker.logs.first { $0.message == "from-second" }
            #expect(TestServer.workerPID(of: one) == first)
            #expect(TestServer.workerPID(of: two) == second)
            try await client.close()
        }
        try await worker.stop()
    }
}
