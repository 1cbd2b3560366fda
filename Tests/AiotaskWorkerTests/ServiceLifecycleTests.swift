import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import Logging
import NIOCore
import ServiceLifecycle
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// `AiotaskServer` as a service of an application's own `ServiceGroup`, beside the application's services.
@Suite("The server in an application's service group", .serialized, .timeLimit(.minutes(1)))
struct ServiceLifecycleTests {
    /// A sibling service of the application: serves until graceful shutdown, or fails when told to.
    private struct ApplicationService: Service {
        let failure = OneShotEvent()
        let stopped = OneShotEvent()

        func run() async throws {
            defer { stopped.signal() }
            await withTaskCancellationOrGracefulShutdownHandler {
                await failure.wait()
            } onCancelOrGracefulShutdown: {
                failure.signal()
            }
            if !Task.isCancelled && !Task.isShuttingDownGracefully { throw ApplicationFailure() }
        }
    }

    private struct ApplicationFailure: Error {}

    /// A server not yet started, on a fresh Unix socket, whose handler is aiotaskd's `chaos` built-in.
    private static func makeServer() throws -> (AiotaskServer, ServerAddress, LogCapture, String) {
        let directory = try makeTemporaryDirectory()
        let address = ServerAddress.unix(path: directory + "/aiotask.sock")
        var configuration = ServerConfiguration(listenAddresses: [address], handler: .builtin("chaos"), workers: 1)
        configuration.killGracePeriod = .milliseconds(500)
        configuration.drainTimeout = .seconds(10) * testSlowdown
        let logs = LogCapture()
        return (AiotaskServer(configuration: configuration, logger: logs.logger), address, logs, directory)
    }

    /// Starts a task that runs for a second and waits until the pool runs it.
    private static func startSlowTask(on server: AiotaskServer, at address: ServerAddress) async throws -> TaskHandle {
        let client = try await AiotaskClient.connect(to: address)
        let handle = try await client.enqueue(ByteBuffer(string: "sleep 1000"))
        // The server logs "listening on" as each listener binds, a moment before `run()` marks it started: until
        // then `info()` throws `notStarted`, which is no failure here (the caller's time limit bounds the wait).
        while (try? await server.info())?.workers.busy ?? 0 == 0 { try await Task.sleep(for: .milliseconds(5)) }
        return handle
    }

    @Test(
        "graceful shutdown of the group drains the server: the task in flight gets its result, then the group returns"
    )
    func gracefulShutdownDrains() async throws {
        let (server, address, logs, directory) = try Self.makeServer()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let application = ApplicationService()
        let group = ServiceGroup(services: [server, application], logger: logs.logger)
        try await withTimeout(.seconds(30)) {
            try await withThrowingTaskGroup(of: Void.self) { running in
                running.addTask { try await group.run() }
                // `run()` started the server: it listens.
                _ = await logs.first { $0.message.hasPrefix("listening on") }
                let task = try await Self.startSlowTask(on: server, at: address)

                await group.triggerGracefulShutdown()
                #expect(String(buffer: try await task.result()) == "slept 1000")
                _ = try await running.next()
                #expect(logs.entries.contains { $0.message == "draining 1 tasks in flight; new tasks are refused" })
                #expect(logs.entries.contains { $0.message == "worker stopped" })
                #expect(application.stopped.hasHappened)
                #expect(access(directory + "/aiotask.sock", F_OK) != 0, "the socket file is left behind")
            }
        }
    }

    @Test("cancelling the group stops the server, after the task in flight got its result")
    func cancellationStops() async throws {
        let (server, address, logs, directory) = try Self.makeServer()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let group = ServiceGroup(services: [server, ApplicationService()], logger: logs.logger)
        try await withTimeout(.seconds(30)) {
            let running = Task { try await group.run() }
            _ = await logs.first { $0.message.hasPrefix("listening on") }
            let task = try await Self.startSlowTask(on: server, at: address)

            running.cancel()
            #expect(String(buffer: try await task.result()) == "slept 1000")
            _ = await running.result
            #expect(logs.entries.contains { $0.message == "worker stopped" })
            #expect(access(directory + "/aiotask.sock", F_OK) != 0, "the socket file is left behind")
        }
    }

    @Test("a failing sibling service stops the server, and the group throws its error")
    func failingSiblingStops() async throws {
        let (server, _, logs, directory) = try Self.makeServer()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let application = ApplicationService()
        let group = ServiceGroup(services: [server, application], logger: logs.logger)
        try await withTimeout(.seconds(30)) {
            try await withThrowingTaskGroup(of: Void.self) { running in
                running.addTask { try await group.run() }
                _ = await logs.first { $0.message.hasPrefix("listening on") }

                application.failure.signal()
                do {
                    _ = try await running.next()
                    Issue.record("the group returned without the failing service's error")
                } catch is ApplicationFailure {}
                #expect(logs.entries.contains { $0.message == "worker stopped" })
                #expect(access(directory + "/aiotask.sock", F_OK) != 0, "the socket file is left behind")
            }
        }
    }

    @Test("the README's embedding example is the code compiled in EmbeddingSnippet.swift")
    func readmeShowsTheCompiledSnippet() throws {
        let snippet = try String(
            contentsOfFile: Products.repositoryRoot + "/Tests/AiotaskWorkerTests/EmbeddingSnippet.swift",
            encoding: .utf8
        )
        let readme = try String(contentsOfFile: Products.repositoryRoot + "/README.md", encoding: .utf8)
        #expect(readme.contains("```swift\n" + snippet + "```\n"), "README.md's \"Embedding the server\" differs")
    }
}
