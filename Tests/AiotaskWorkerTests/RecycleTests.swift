import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import NIOCore
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

@Suite("Recycling pool processes")
struct RecycleTests {
    @Test("a process is replaced after its quota of tasks")
    func quota() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1) {
            $0.maximumTasksPerProcess = 3
            $0.maximumTasksJitter = 0
            // Time enough to leave on its own even on a loaded machine: the test checks that it does.
            $0.killGracePeriod = .seconds(5)
        }
        try await withTimeout {
            let client = try await server.client()
            var pids: [Int32] = []
            for _ in 1...7 { pids.append(try await client.workerPID()) }
            #expect(Set(pids[0..<3]).count == 1, "\(pids)")
            #expect(Set(pids[3..<6]).count == 1, "\(pids)")
            #expect(pids[3] != pids[0], "\(pids)")
            #expect(pids[6] != pids[3], "\(pids)")
            // A recycled process leaves in peace: its link is closed and it exits by itself, not killed.
            let recycled = pids[0]
            let exit = await server.logs.first {
                $0.message.hasPrefix("retired pool process") && TestServer.workerPID(of: $0) == recycled
            }
            #expect(exit.message.contains("exited with code 0"), "\(exit.message)")
            try await client.close()
        }
        try await server.stop()
    }

    @Test("without a quota a process serves on")
    func noQuota() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1)
        try await withTimeout {
            let client = try await server.client()
            var pids = Set<Int32>()
            for _ in 1...10 { pids.insert(try await client.workerPID()) }
            #expect(pids.count == 1)
            try await client.close()
        }
        try await server.stop()
    }

    @Test("the jitter adds between 0 and its value to each process's quota")
    func jitter() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1) {
            $0.maximumTasksPerProcess = 1
            $0.maximumTasksJitter = 2
        }
        try await withTimeout {
            let client = try await server.client()
            var pids: [Int32] = []
            for _ in 1...30 { pids.append(try await client.workerPID()) }
            // Runs of the same pid: one per process. The last may have been cut short by the end of the test.
            var runs: [Int] = []
            for (index, pid) in pids.enumerated() {
                if index > 0 && pid == pids[index - 1] { runs[runs.count - 1] += 1 } else { runs.append(1) }
            }
            #expect(Set(pids).count == runs.count, "a pid came back: \(pids)")
            #expect(runs.dropLast().allSatisfy { (1...3).contains($0) }, "\(runs)")
            #expect(runs.last! <= 3, "\(runs)")
            // With at least ten processes, all drawing 0 has a chance below 1 in 59,000.
            #expect(runs.contains { $0 > 1 }, "no jitter was added: \(runs)")
            try await client.close()
        }
        try await server.stop()
    }
}
