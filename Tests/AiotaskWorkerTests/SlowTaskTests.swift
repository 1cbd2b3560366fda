import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Logging
import Testing

@testable import AiotaskServer

/// `slow-task-threshold`: one journal entry per task that runs past it, while it still runs, and a count.
@Suite("Slow tasks")
struct SlowTaskTests {
    /// The entries of slow tasks among `entries`.
    static func slowEntries(_ entries: [LogCapture.Entry]) -> [LogCapture.Entry] {
        entries.filter { $0.metadata["message_id"] == LogMessageID.slowTask }
    }

    @Test("a task running past the threshold gets exactly one entry, logged before its answer")
    func loggedOnceWhileRunning() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1) {
            $0.slowTaskThreshold = .milliseconds(100)
        }
        try await withTimeout {
            let client = try await server.client()
            let pid = try await client.workerPID()
            // Eight thresholds long: an entry repeated while the task runs would show.
            let task = try await client.enqueue("sleep 800")
            let entry = await server.logs.first { $0.metadata["message_id"] == LogMessageID.slowTask }
            #expect(try await task.text() == "slept 800")

            #expect(entry.metadata["task_id"] == "\(task.id)")
            #expect(entry.metadata["worker_pid"] == "\(pid)")
            let elapsed = try #require(entry.metadata["elapsed_usec"].flatMap(Int.init))
            #expect(elapsed >= 100_000 && elapsed < 800_000, "elapsed \(elapsed) µs")
            #expect(entry.level == .warning)
            // Logged while the task ran: before the entry of its answer, which the server logs as it answers.
            let entries = server.logs.entries
            let slowIndex = try #require(entries.firstIndex { $0.metadata["message_id"] == LogMessageID.slowTask })
            let doneIndex = try #require(
                entries.firstIndex { $0.message == "task done" && $0.metadata["task_id"] == "\(task.id)" }
            )
            #expect(slowIndex < doneIndex)
            #expect(Self.slowEntries(entries).count == 1)
            #expect(try await client.serverInfo().tasks.slow == 1)
            let exposition = try await server.server.metricsExposition()
            let sample = exposition.split(separator: "\n").first { $0.hasPrefix("aiotask_slow_tasks_total ") }
            #expect(sample.flatMap { Double($0.split(separator: " ")[1]) } == 1, "\(sample ?? "no sample")")
            try await client.close()
        }
        try await server.stop()
    }

    @Test("tasks that end below the threshold get no entry and are not counted")
    func noneBelowThreshold() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1) {
            $0.slowTaskThreshold = .milliseconds(300)
        }
        try await withTimeout {
            let client = try await server.client()
            for _ in 0..<5 {
                #expect(try await client.submit("sleep 20") == Array("slept 20".utf8))
            }
            // A slow task on the same process starts after them: its entry comes one threshold after its start,
            // later than any entry the fast tasks' timers could have made.
            let slow = try await client.enqueue("sleep 700")
            let entry = await server.logs.first { $0.metadata["message_id"] == LogMessageID.slowTask }
            #expect(entry.metadata["task_id"] == "\(slow.id)")
            _ = try await slow.result()
            #expect(Self.slowEntries(server.logs.entries).count == 1)
            #expect(try await client.serverInfo().tasks.slow == 1)
            try await client.close()
        }
        try await server.stop()
    }

    @Test("with no threshold, no task gets an entry")
    func offByDefault() async throws {
        #expect(ServerConfiguration(handler: .builtin("chaos")).slowTaskThreshold == nil)
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1)
        try await withTimeout {
            let client = try await server.client()
            #expect(try await client.submit("sleep 300") == Array("slept 300".utf8))
            #expect(Self.slowEntries(server.logs.entries).isEmpty)
            #expect(try await client.serverInfo().tasks.slow == 0)
            try await client.close()
        }
        try await server.stop()
    }

    @Test("a reload that sets the threshold applies it to the next task")
    func appliedOnReload() async throws {
        var started = ServerConfiguration(handler: .builtin("chaos"), workers: 1)
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1) { started = $0 }
        var reloaded = started
        reloaded.slowTaskThreshold = .milliseconds(100)
        try await withTimeout { [reloaded] in
            let client = try await server.client()
            #expect(try await client.submit("sleep 200") == Array("slept 200".utf8))
            try await server.server.reload(reloaded)
            try await server.waitForFullPool()
            let task = try await client.enqueue("sleep 400")
            let entry = await server.logs.first { $0.metadata["message_id"] == LogMessageID.slowTask }
            #expect(entry.metadata["task_id"] == "\(task.id)")
            _ = try await task.result()
            #expect(Self.slowEntries(server.logs.entries).count == 1)
            try await client.close()
        }
        try await server.stop()
    }
}
