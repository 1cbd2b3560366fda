import AiotaskProtocol
import AiotaskTestSupport
import NIOCore
import Testing

@testable import AiotaskClient
@testable import AiotaskServer
@testable import AiotaskWorker

@Suite("STATUS from live state")
struct StatusTests {
    @Test("STATUS follows a task from the queue through its process to its end")
    func lifecycle() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1)
        try await withTimeout(.seconds(10)) {
            let client = try await server.client()
            // The pool's one process is idle, so the first task runs at once and the second waits behind it.
            let running = try await client.enqueue("sleep 60000")
            let waiting = try await client.enqueue("echo waited")
            #expect(try await running.status() == .processing)
            #expect(try await waiting.status() == .inQueue)

            running.cancel()
            #expect(await running.failure()?.reason == .cancelled)
            #expect(try await running.status() == .failed)

            #expect(try await waiting.text() == "waited")
            #expect(try await waiting.status() == .done)

            let failing = try await client.enqueue("fail on purpose")
            #expect(await failing.failure()?.reason == .handlerError)
            #expect(try await failing.status() == .failed)

            #expect(try await client.status(of: TaskID.random()) == .notFound)
            try await client.close()
        }
        try await server.stop()
    }

    @Test("a connection remembers only its most recent finished tasks")
    func finishedTasksBounded() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1) {
            $0.finishedTasksRemembered = 2
        }
        try await withTimeout(.seconds(10)) {
            let client = try await server.client()
            var tasks: [TaskHandle] = []
            for index in 1...3 {
                let task = try await client.enqueue("echo \(index)")
                #expect(try await task.text() == "\(index)")
                tasks.append(task)
            }
            #expect(try await tasks[0].status() == .notFound)
            #expect(try await tasks[1].status() == .done)
            #expect(try await tasks[2].status() == .done)

            // Failures take their place in the same memory.
            #expect(try await client.enqueue("fail once").failure()?.reason == .handlerError)
            #expect(try await tasks[1].status() == .notFound)
            #expect(try await tasks[2].status() == .done)
            try await client.close()
        }
        try await server.stop()
    }

    @Test("each connection has its own tasks: another connection's id is unknown")
    func perConnection() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1)
        try await withTimeout(.seconds(10)) {
            let owner = try await server.client()
            let stranger = try await server.client()
            let task = try await owner.enqueue("sleep 60000")
            #expect(try await task.status() == .processing)
            #expect(try await stranger.status(of: task.id) == .notFound)
            task.cancel()
            _ = await task.failure()
            try await owner.close()
            try await stranger.close()
        }
        try await server.stop()
    }
}
