import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Glibc
import NIOCore
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

/// `count` pseudo-random bytes, different for each `seed`.
private func payload(_ count: Int, seed: UInt64) -> ByteBuffer {
    var generator = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    var buffer = ByteBuffer()
    buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { bytes in
        for index in 0..<count {
            generator ^= generator << 13
            generator ^= generator >> 7
            generator ^= generator << 17
            bytes[index] = UInt8(truncatingIfNeeded: generator)
        }
        return count
    }
    return buffer
}

@Suite("Shared memory: large tasks and results travel between aiotaskd and its pool processes", .serialized)
struct SharedPayloadTests {
    @Test("tasks from just under the threshold to past the arena's size come back byte for byte; large ones used it")
    func echoAcrossSizes() async throws {
        let server = try await TestServer.start(workers: 1)
        try await withTimeout {
            let client = try await server.client()
            let sizes = [
                0, 100, SharedPayloadArena.threshold - 1, SharedPayloadArena.threshold, 1 << 20, 3 << 20 + 7,
                SharedPayloadArena.defaultCapacity + 1,
            ]
            for (seed, size) in sizes.enumerated() {
                let task = payload(size, seed: UInt64(seed))
                #expect(try await client.submit(task) == task, "\(size) bytes")
            }
            let usage = try await server.server.sharedPayloadUsage()
            // The three between the threshold and the arena's size; the one larger than the arena went inline.
            #expect(usage.tasks == 3)
            #expect(usage.regionsInUse == 0)
            try await client.close()
        }
        try await server.stop()
    }

    @Test("with a smaller arena, a task larger than it travels inline; with none, every task does")
    func configuredSize() async throws {
        for megabytes in [1, 0] {
            let server = try await TestServer.start(workers: 1) { $0.sharedPayloadBytes = megabytes << 20 }
            try await withTimeout {
                let client = try await server.client()
                // Answered once the process has mapped its arena: tasks sent before that travel inline.
                #expect(try await client.submit("ready") == Array("ready".utf8))
                for (seed, size) in [512 * 1024, 2 << 20].enumerated() {
                    let task = payload(size, seed: UInt64(seed))
                    #expect(try await client.submit(task) == task, "\(size) bytes")
                }
                #expect(try await server.server.sharedPayloadUsage().tasks == megabytes)
                try await client.close()
            }
            try await server.stop()
        }
    }

    @Test("many large tasks in flight, sent ahead and answered in turn, leave no region behind")
    func regionsAreReturned() async throws {
        let server = try await TestServer.start(workers: 2)
        try await withTimeout {
            let client = try await server.client()
            let tasks = (0..<24).map { payload(256 * 1024 + $0, seed: UInt64($0)) }
            try await withThrowingTaskGroup(of: Bool.self) { group in
                for task in tasks {
                    group.addTask { try await client.submit(task) == task }
                }
                for try await matched in group { #expect(matched) }
            }
            let usage = try await server.server.sharedPayloadUsage()
            #expect(usage.tasks >= 2)
            #expect(usage.regionsInUse == 0)
            try await client.close()
        }
        try await server.stop()
    }

    @Test("large tasks sent ahead to a busy process and withdrawn run on another one, and free their regions")
    func withdrawnTasksFreeTheirRegions() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 2) {
            $0.prefetchStallLimit = .seconds(3600)
        }
        try await withTimeout {
            let client = try await server.client()
            // Both processes busy for a minute, so the large tasks are sent ahead behind them.
            let stuck = try await client.enqueue("sleep 60000")
            let interrupted = try await client.enqueue("sleep 60000")
            _ = try await client.waitForInfo { $0.tasks.running == 2 }
            let texts = (0..<4).map { String(repeating: Character(UnicodeScalar(UInt8(97 + $0))), count: 100_000) }
            var handles: [TaskHandle] = []
            for text in texts { handles.append(try await client.enqueue("echo " + text)) }
            _ = try await client.waitForInfo { $0.queue.length == 4 }
            // Its process is replaced, and the new one runs the tasks the old one had; idle then, it takes back those
            // waiting behind the stuck one: only so can all four finish within the test's time.
            interrupted.cancel()
            for (handle, text) in zip(handles, texts) { #expect(try await handle.text() == text) }
            let usage = try await server.server.sharedPayloadUsage()
            #expect(usage.tasks >= 2)
            #expect(usage.regionsInUse == 0)
            #expect(server.logs.entries.contains { $0.message.contains("withdrew") })
            stuck.cancel()
            try await client.close()
        }
        try await server.stop()
    }

    @Test("a process that points at shared memory outside its task's region fails that task, and the pool goes on")
    func resultOutsideItsRegion() async throws {
        // A stand-in for a library handler that maps the arena and then answers with a wrong offset.
        let script = try HandlerScript(
            """
            import mmap
            import os

            size = int(os.environ["AIOTASK_SHARED_PAYLOAD_BYTES"])
            arena = mmap.mmap(int(os.environ["AIOTASK_CLAIMS_FD"]), 8192 + size)
            arena[4096:4100] = struct.pack("<I", 0x61696F70)
            while True:
                # Each task comes after its context (id, timeout), which a library handler is sent.
                if read_exactly(24) is None:
                    break
                header = read_exactly(5)
                kind, length = struct.unpack(">BI", header)
                if kind == 1:
                    (offset,) = struct.unpack(">I", read_exactly(4))
                    stdout.write(struct.pack(">BII", 2, length, offset + 64))
                    stdout.flush()
                else:
                    reply(0, read_exactly(length))
            """
        )
        let command = ProcessCommand(
            executable: HandlerScript.python,
            arguments: [script.path],
            environment: [PoolProcessRole.environmentKey: PoolProcessRole.handler.rawValue],
            displayName: "lying"
        )
        let server = try await TestServer.start(handler: command, workers: 1)
        try await withTimeout {
            let client = try await server.client()
            #expect(try await client.submit("small") == Array("small".utf8))
            let failure = try await client.enqueue(payload(100_000, seed: 1)).failure()
            #expect(failure?.reason == .workerCrashed)
            #expect(failure?.message.contains("at offset 64 of shared memory") == true)
            #expect(try await client.submit("after") == Array("after".utf8))
            let broken = server.logs.entries.filter { $0.message.contains("broke its link") }
            #expect(broken.contains { $0.message.contains("100000 bytes at offset 0") })
            try await client.close()
        }
        try await server.stop()
    }
}
