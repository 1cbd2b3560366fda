import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import Logging
import NIOCore
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

/// Many connections at once: what the daemon holds and serves, and how it refuses the rest.
@Suite("Many connections", .serialized)
struct ConnectionScaleTests {
    static let connections = 10_000

    @Test(
        "aiotaskd started with a low open-file limit raises it, then serves 10,000 connections open at once",
        .enabled(
            if: (OpenFileLimit.current?.hard ?? 0) >= UInt64(connections + 1000),
            "the hard open-file limit (ulimit -Hn) is below \(connections + 1000)"
        )
    )
    func tenThousandConnections() async throws {
        // This process holds the client side of every connection.
        try OpenFileLimit.raiseSoftLimitToHard()
        let hard = try #require(OpenFileLimit.current?.hard)
        let directory = try makeTemporaryDirectory()
        let path = directory + "/aiotask.sock"
        // The daemon starts with the soft limit of a default login session; it must raise it itself.
        let daemon = try SpawnedProcess.spawn(
            "/bin/sh",
            [
                "-c", "ulimit -Sn 1024 && exec \"$0\" \"$@\"", Products.aiotaskd, "--listen", "unix:\(path)",
                "--workers", "2",
            ],
            removing: systemdVariables
        )
        defer {
            daemon.killGroup()
            try? FileManager.default.removeItem(atPath: directory)
        }
        try await daemon.waitForStandardError(containing: "ready")
        #expect(daemon.standardError.contains("raised the open-file limit (RLIMIT_NOFILE) from 1024 to \(hard)"))
        let (soft, daemonHard) = try Self.openFileLimits(of: daemon.pid)
        #expect(soft == hard && daemonHard == hard)
        try await withTimeout(.seconds(60)) {
            // Every connection is opened before any is used, then each sends a task and reads its answer.
            var sockets: [UnixSocket] = []
            sockets.reserveCapacity(Self.connections)
            for _ in 0..<Self.connections { sockets.append(try UnixSocket(path: path)) }
            let client = try await AiotaskClient.connect(to: .unix(path: path))
            #expect(try await client.serverInfo().connections == Self.connections + 1)

            // Each asks the status of a task (answered by its connection: UPDATE NOT_FOUND), and every 100th
            // also runs one through the pool (answered DONE).
            var ids: [TaskID] = []
            for (index, socket) in sockets.enumerated() {
                let id = TaskID.random()
                ids.append(id)
                var bytes = RawConnection.legacyFrame(type: 4, id.bytes)
                if index % 100 == 0 { bytes += RawConnection.legacyFrame(type: 1, id.bytes + [0x2a]) }
                #expect(socket.send(bytes))
            }
            var answered = 0
            for (index, (socket, id)) in zip(sockets, ids).enumerated() {
                var expected = [2, 0, 17] + id.bytes + [TaskStatus.notFound.rawValue]
                if index % 100 == 0 { expected += [3, 0, 17] + id.bytes + [0x2a] }
                if try socket.receive(count: expected.count) == expected { answered += 1 }
            }
            #expect(answered == Self.connections)
            sockets.removeAll()
            try await client.waitForInfo { $0.connections == 1 }
            try await client.close()
        }
        daemon.signal(SIGTERM)
        #expect(try await daemon.wait() == .exited(0))
    }

    @Test("a flood of connections past max-connections is refused and logged, and those within it are served")
    func flood() async throws {
        let server = try await TestServer.start(workers: 1) { $0.maximumConnections = 100 }
        try await withTimeout {
            let sockets = try (0..<500).map { _ in try UnixSocket(path: server.socketPath) }
            // The server accepts in order: the first 100 are held, every later one is closed without a byte.
            for socket in sockets[100...] { #expect(try socket.receiveUntilClosed().isEmpty) }
            let refusals = server.logs.entries.filter { $0.message.hasPrefix("refusing connection: 100 connections") }
            #expect(refusals.count == 400)
            #expect(refusals.allSatisfy { $0.level == .warning })
            for socket in sockets[..<100] {
                let id = TaskID.random()
                #expect(socket.send(RawConnection.legacyFrame(type: 1, id.bytes + [0x2a])))
                #expect(try socket.receive(count: 20) == [3, 0, 17] + id.bytes + [0x2a])
            }
        }
        try await server.stop()
    }

    @Test("a daemon out of descriptors logs the failed accept once a second and takes the waiting connections later")
    func outOfDescriptors() async throws {
        let directory = try makeTemporaryDirectory()
        let path = directory + "/aiotask.sock"
        // Soft and hard limit both: the daemon cannot raise it, and runs out after a few dozen connections.
        let daemon = try SpawnedProcess.spawn(
            "/bin/sh",
            [
                "-c", "ulimit -n 64 && exec \"$0\" \"$@\"", Products.aiotaskd, "--listen", "unix:\(path)", "--workers",
                "1",
            ],
            removing: systemdVariables
        )
        defer {
            daemon.killGroup()
            try? FileManager.default.removeItem(atPath: directory)
        }
        try await daemon.waitForStandardError(containing: "ready")
        try await withTimeout(.seconds(30)) {
            let clock = ContinuousClock()
            let start = clock.now
            // More than the daemon has descriptors for: the rest wait in the socket's backlog, their task sent.
            var sockets = try (0..<100).map { _ in try UnixSocket(path: path, receiveTimeout: .seconds(10)) }
            let ids = sockets.map { _ in TaskID.random() }
            for (socket, id) in zip(sockets, ids) {
                #expect(socket.send(RawConnection.legacyFrame(type: 1, id.bytes + [0x2a])))
            }
            try await daemon.waitForStandardError(containing: "cannot accept a connection")
            #expect(daemon.standardError.contains("Too many open files"), "\(daemon.standardError)")
            // The daemon accepts in order: closing the first 70 frees every descriptor it had taken. No new
            // connection comes to wake the listener: it must try `accept` again by itself.
            sockets.removeFirst(70)
            var answered = 0
            for (socket, id) in zip(sockets, ids[70...]) {
                if try socket.receive(count: 20) == [3, 0, 17] + id.bytes + [0x2a] { answered += 1 }
            }
            #expect(answered == 30)
            // One entry per second of backoff (and one more for the first), never one per spin of the loop.
            let seconds = Int((clock.now - start).components.seconds)
            let entries = daemon.standardError.split(separator: "\n").filter {
                $0.contains("cannot accept a connection")
            }
            #expect(entries.count <= seconds + 2, "\(entries.count) entries in \(seconds) s")
        }
        daemon.signal(SIGTERM)
        #expect(try await daemon.wait() == .exited(0))
    }

    /// The soft and hard `Max open files` of a process, from `/proc/PID/limits`.
    static func openFileLimits(of pid: pid_t) throws -> (UInt64, UInt64) {
        let text = try String(contentsOfFile: "/proc/\(pid)/limits", encoding: .utf8)
        let line = try #require(text.split(separator: "\n").first { $0.hasPrefix("Max open files") })
        let fields = line.dropFirst("Max open files".count).split(separator: " ")
        return (try #require(UInt64(fields[0])), try #require(UInt64(fields[1])))
    }
}
