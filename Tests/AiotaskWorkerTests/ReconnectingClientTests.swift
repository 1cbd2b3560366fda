import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

@Suite("ReconnectingClient: a client that outlives its server's restarts", .serialized)
struct ReconnectingClientTests {
    @Test("a task submitted while the server stops runs on the server started after it; the running one finishes")
    func resubmitsAcrossARestart() async throws {
        let first = try await TestServer.start(handler: .builtin("chaos"), workers: 1)
        let client = ReconnectingClient(to: first.address)
        try await withTimeout(.seconds(30)) {
            #expect(try await client.submit("echo one") == Array("one".utf8))
            async let running = client.submit("sleep 1000")
            while try await first.server.info().workers.busy == 0 { try await Task.sleep(for: .milliseconds(5)) }

            let stopping = Task { try await first.server.shutdown() }
            _ = await first.logs.first { $0.message.hasPrefix("draining") }
            // Refused by the stopping server (or not even sent, once its GOODBYE arrived), so never started.
            async let late = client.submit("echo two")
            #expect(try await running == Array("slept 1000".utf8))
            try await stopping.value

            let second = try await TestServer.start(handler: .builtin("chaos"), workers: 1, in: first.directory)
            #expect(try await late == Array("two".utf8))
            let info = try await client.serverInfo()
            #expect(info.tasks.submitted == 1, "the late task ran once, on the second server: \(info.tasks)")
            #expect(info.pid == Int(getpid()))
            try await client.close()
            try await second.stop()
        }
    }

    @Test("a task lost with its connection is not run again; the next task connects to the new server")
    func lostTaskIsNotResubmitted() async throws {
        let arguments = ["--handler", "chaos", "--workers", "1"]
        let first = try await RunningDaemon.start(arguments: arguments)
        defer { try? FileManager.default.removeItem(atPath: first.directory) }
        let client = ReconnectingClient(to: .unix(path: first.socket))
        try await withTimeout(.seconds(30)) {
            #expect(try await client.submit("echo one") == Array("one".utf8))
            async let lost = client.submit("sleep 60000")
            while try await client.serverInfo().workers.busy == 0 { try await Task.sleep(for: .milliseconds(5)) }

            first.process.killGroup()
            _ = try await first.process.wait()
            do {
                _ = try await lost
                Issue.record("the task survived the death of its server")
            } catch let error as AiotaskClientError {
                #expect(error.code == .connectionLost, "\(error)")
            }

            let second = try await RunningDaemon.start(arguments: arguments, in: first.directory)
            try await second.stopAfter {
                #expect(try await client.submit("echo two") == Array("two".utf8))
                let info = try await client.serverInfo()
                #expect(info.pid == Int(second.process.pid))
                #expect(info.tasks.submitted == 1, "only the new task reached the new server: \(info.tasks)")
                try await client.close()
            }
        }
    }

    @Test("with no server, a task fails with connectFailed once the retry limit has passed")
    func givesUpAtTheRetryLimit() async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let client = ReconnectingClient(
            to: .unix(path: directory + "/aiotask.sock"),
            configuration: .init(retryLimit: .milliseconds(400))
        )
        try await withTimeout {
            do {
                _ = try await client.submit("never")
                Issue.record("a task ran without a server")
            } catch let error as AiotaskClientError {
                #expect(error.code == .connectFailed, "\(error)")
            }
        }
    }

    @Test(
        "connecting is tried again with a growing backoff until the retry limit, then the last attempt's error is thrown"
    )
    func retriesWithBackoff() async throws {
        // A stand-in server that counts the connections it accepts, and closes each at once.
        let accepts = NIOLockedValueBox(0)
        let listener = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                accepts.withLockedValue { $0 += 1 }
                return channel.close()
            }
            .bind(host: "127.0.0.1", port: 0).get()
        defer { listener.close(promise: nil) }
        let port = try #require(listener.localAddress?.port)
        // Attempts 50, 100, 200 and 400 ms apart: at 0, 50, 150, 350 and 750 ms; the next would start past the
        // limit. A slow machine may lose the last ones; an attempt that was not tried again, or was tried without
        // a wait, shows in the count.
        let client = ReconnectingClient(
            to: .tcp(host: "127.0.0.1", port: port),
            configuration: .init(retryLimit: .milliseconds(1000))
        )
        try await withTimeout {
            do {
                _ = try await client.submit("never")
                Issue.record("a task ran on a server that closes every connection")
            } catch let error as AiotaskClientError {
                #expect(error.code == .closedBeforeHandshake, "\(error)")
            }
        }
        let attempts = accepts.withLockedValue { $0 }
        #expect((3...5).contains(attempts), "connection attempts: \(attempts)")
    }

    @Test("concurrent tasks share one connection, made once; after close() every request fails at once")
    func sharesOneConnection() async throws {
        let server = try await TestServer.start(workers: 2)
        let client = ReconnectingClient(to: server.address)
        try await withTimeout {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<200 {
                    group.addTask {
                        let result = try await client.submit("task \(index)")
                        #expect(result == Array("task \(index)".utf8))
                    }
                }
                try await group.waitForAll()
            }
            #expect(try await client.serverInfo().connections == 1)
            let connects = server.logs.entries.filter { $0.message == "client connected" }
            #expect(connects.count == 1, "connections made: \(connects.count)")
            try await client.close()
            do {
                _ = try await client.submit("after close")
                Issue.record("a closed client sent a task")
            } catch let error as AiotaskClientError {
                #expect(error == AiotaskClientError(.connectionLost, reason: "the client was closed"))
            }
        }
        try await server.stop()
    }
}
