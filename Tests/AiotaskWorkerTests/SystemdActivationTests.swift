import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// aiotaskd started by the real `systemd-socket-activate`, serving the socket it was handed.
@Suite(
    "Socket activation under systemd-socket-activate",
    .enabled(if: systemdSocketActivateIsInstalled, "no \(systemdSocketActivate) (package systemd)"),
    .timeLimit(.minutes(1))
)
struct SystemdActivationTests {
    enum Transport: String, CaseIterable, Sendable, CustomTestStringConvertible {
        case tcp4, tcp6, unix
        var testDescription: String { rawValue }
    }

    @Test(
        "the daemon serves the passed socket under its --fdname, its pool does not hold it, a socket file stays",
        .enabled(
            if: access(SystemdActivationTests.ss, X_OK) == 0,
            "no \(SystemdActivationTests.ss) (package iproute2)"
        ),
        arguments: Transport.allCases
    )
    func servesThePassedSocket(_ transport: Transport) async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let socketPath = directory + "/aiotask.sock"
        let listen: String
        let server: String
        switch transport {
        case .tcp4:
            let port = try SystemdTestKit.freePort(host: "127.0.0.1")
            (listen, server) = ("127.0.0.1:\(port)", "tcp://127.0.0.1:\(port)")
        case .tcp6:
            let port = try SystemdTestKit.freePort(host: "::1")
            (listen, server) = ("[::1]:\(port)", "tcp://[::1]:\(port)")
        case .unix:
            (listen, server) = (socketPath, "unix:\(socketPath)")
        }
        let fdname = "aiotask-\(transport.rawValue)"
        let ssFilter =
            transport == .unix
            ? ["-lxH", "src", socketPath] : ["-ltnH", "sport = :\(listen.split(separator: ":").last!)"]
        // Without --listen the daemon would bind /run/aiotask/aiotask.sock: answering on `server` proves adoption.
        let daemon = try SocketActivatedDaemon.start(
            listen: listen,
            fdname: fdname,
            ["--handler", "echo", "--workers", "1"]
        )
        defer { daemon.cleanUp() }
        try await daemon.waitUntilListening()
        let activatorBacklog = try await Self.listenBacklog(ssFilter)

        // The CLI's connection is the first one: it makes systemd-socket-activate exec the daemon.
        let submit = try SpawnedProcess.spawn(
            Products.aiotask,
            ["submit", "--server", server, "--connect-timeout", "20", "hello over \(transport.rawValue)"]
        )
        let submitted = try await submit.wait()
        #expect(submitted == .exited(0), "aiotask submit: \(submit.standardError)")
        #expect(submit.standardOutput == "hello over \(transport.rawValue)")
        try await daemon.process.waitForStandardError(containing: "serving adopted socket \(fdname) (fd 3)")

        // The daemon holds the passed socket as fd 3; no pool process holds it, nor any socket at all.
        let passed = try #require(SystemdTestKit.descriptors(of: daemon.pid)[3])
        #expect(passed.hasPrefix("socket:["))
        let workers = SystemdTestKit.children(of: daemon.pid)
        #expect(workers.count == 1, "pool processes: \(workers)")
        for worker in workers {
            let descriptors = SystemdTestKit.descriptors(of: worker)
            #expect(descriptors[0] != nil, "cannot read /proc/\(worker)/fd")
            #expect(!descriptors.values.contains(passed), "pool process \(worker) holds the passed socket")
            #expect(
                !descriptors.values.contains { $0.hasPrefix("socket:") },
                "pool process \(worker) holds a socket: \(descriptors)"
            )
        }

        // NIO listens again on the adopted socket with a backlog of its own; the daemon restores the activator's
        // before it says it is ready (it may serve a client before that).
        try await daemon.process.waitForStandardError(containing: "ready")
        #expect(try await Self.listenBacklog(ssFilter) == activatorBacklog)

        #expect(try await daemon.stop() == .exited(0))
        if transport == .unix {
            // The socket belongs to the service manager: the daemon never unlinks it.
            var status = stat()
            #expect(lstat(socketPath, &status) == 0, "\(socketPath) was removed")
            #expect(status.st_mode & S_IFMT == S_IFSOCK)
        }
    }

    /// The `ss` program of iproute2, which shows a listening socket's backlog.
    static let ss = "/usr/bin/ss"

    /// The accept-queue limit of the one listening socket `ss` finds with `filter` (its Send-Q column).
    private static func listenBacklog(_ filter: [String]) async throws -> Int {
        let ss = try SpawnedProcess.spawn(Self.ss, filter)
        #expect(try await ss.wait() == .exited(0))
        let words = ss.standardOutput.split(whereSeparator: \.isWhitespace)
        let state = try #require(words.firstIndex(of: "LISTEN"), "ss \(filter): \(ss.standardOutput)")
        return try #require(words.count > state + 2 ? Int(words[state + 2]) : nil, "ss: \(ss.standardOutput)")
    }

    @Test("with no --fdname the socket is logged under systemd's default name, and the client library is served")
    func defaultNameAndClientLibrary() async throws {
        let port = try SystemdTestKit.freePort()
        let daemon = try SocketActivatedDaemon.start(
            listen: "127.0.0.1:\(port)",
            ["--handler", "echo", "--workers", "1"]
        )
        defer { daemon.cleanUp() }
        try await daemon.waitUntilListening()
        try await withTimeout {
            let client = try await SystemdTestKit.connect(to: .tcp(host: "127.0.0.1", port: port))
            #expect(try await client.submit("through the library") == Array("through the library".utf8))
            #expect(try await client.serverInfo().pid == Int(daemon.pid))
            try await client.close()
        }
        try await daemon.process.waitForStandardError(containing: "serving adopted socket unknown (fd 3)")
        #expect(try await daemon.stop() == .exited(0))
    }
}
