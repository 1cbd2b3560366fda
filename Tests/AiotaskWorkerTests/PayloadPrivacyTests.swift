import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Logging
import NIOCore
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

@Suite("Task data stays out of the log")
struct PayloadPrivacyTests {
    static let secret = "s3cr3t-payload-7f1c"

    @Test("no entry above debug level carries a task's bytes, whether it succeeds, is rejected, cancelled or too large")
    func payloadsAreNotLogged() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1) { configuration in
            configuration.maximumPayloadLength = 1024
            configuration.queueCapacity = 1
        }
        try await withTimeout {
            let client = try await server.client()
            // A task that runs, one that queues and is cancelled, one refused by the full queue, one too large.
            let running = try await client.enqueue(ByteBuffer(string: "sleep 2000"))
            while try await server.server.info().workers.busy == 0 { try await Task.sleep(for: .milliseconds(5)) }
            let queued = try await client.enqueue(ByteBuffer(string: "echo \(Self.secret)"))
            let refused = try await client.enqueue(ByteBuffer(string: "echo \(Self.secret)"))
            queued.cancel()
            for handle in [queued, refused] {
                await #expect(throws: TaskFailure.self) { _ = try await handle.result() }
            }
            _ = try await running.result()
            #expect(String(buffer: try await client.submit(ByteBuffer(string: "echo \(Self.secret)"))) == Self.secret)
            try await client.close()
            // The client library refuses a task over the server's limit itself: send one by hand.
            try await RawConnection.with(server.address) { connection in
                try await connection.send(.hello(Hello(maximumPayloadLength: 1 << 20)))
                let tooLarge = ByteBuffer(string: String(repeating: Self.secret, count: 100))
                try await connection.send(.submit(TaskID.random(), timeout: nil, payload: tooLarge))
                _ = try await connection.readFrame()
                #expect(try await connection.readFrame()?.type == FrameType.failed.rawValue)
            }
        }
        try await server.stop()

        let entries = server.logs.entries
        let taskEntries = entries.filter { $0.metadata["task_id"] != nil }
        #expect(taskEntries.count >= 5, "each task's end is logged")
        for entry in entries where entry.level > .debug {
            let text = entry.message + " " + entry.metadata.values.joined(separator: " ")
            #expect(!text.contains(Self.secret), "\(entry.level): \(text)")
        }
    }
}
