import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import NIOCore
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

@Suite("Clients that disconnect")
struct DisconnectTests {
    @Test("a client's disconnection kills its running task's process and drops its queued tasks")
    func abandonedTasks() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1)
        try await withTimeout(.seconds(10)) {
            let leaving = try await server.client()
            let pid = try await leaving.workerPID()
            let process = try ProcessDeathWatch(pid: pid)
            let running = try await leaving.enqueue("sleep 60000")
            let queued = [
                try await leaving.enqueue("stderr dropped-task-ran"),
                try await leaving.enqueue("stderr dropped-task-ran"),
            ]
            #expect(try await running.status() == .processing)
            #expect(try await leaving.serverInfo().queue.length == 2)

            try await leaving.close()
            for task in [running] + queued {
                await #expect(throws: AiotaskClientError.self) { try await task.result() }
            }

            #expect(await process.waitForExit(limit: .seconds(5)), "the abandoned task's process \(pid) lives on")
            try await server.waitForFullPool()
            let info = try await server.server.info()
            #expect(info.queue.length == 0)
            #expect(info.connections == 0)

            let staying = try await server.client()
            #expect(try await staying.workerPID() != pid)
            #expect(try await staying.submit("stderr served-after") == Array("logged".utf8))
            // Had a dropped task run, it would have run first on this same process, and its line come first.
            _ = await server.logs.first { $0.message == "served-after" }
            #expect(!server.logs.entries.contains { $0.message == "dropped-task-ran" })
            try await staying.close()
        }
        try await server.stop()
    }

    @Test("one client's disconnection leaves another client's tasks alone")
    func otherClientsUnaffected() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 2)
        try await withTimeout(.seconds(10)) {
            let staying = try await server.client()
            let leaving = try await server.client()
            let kept = try await staying.enqueue("sleep 600")
            let abandoned = try await leaving.enqueue("sleep 60000")
            #expect(try await abandoned.status() == .processing)
            try await leaving.close()
            try await staying.waitForInfo { $0.connections == 1 }
            #expect(try await kept.text() == "slept 600")
            try await server.waitForFullPool()
            try await staying.close()
        }
        try await server.stop()
    }
}
