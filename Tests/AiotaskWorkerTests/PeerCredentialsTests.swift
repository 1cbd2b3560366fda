import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import Logging
import NIOCore
import Testing

@testable import AiotaskServer

#if canImport(Glibc)
    import Glibc
#endif

/// `allow-users` and `allow-groups` against real clients of other users: `aiotaskd` as started by the tests (root,
/// here and in CI), and the shipped `aiotask` CLI run as `nobody` through util-linux's `setpriv`, over a Unix socket
/// that everyone may open, so that only the daemon's check stands between them.
@Suite("Unix socket peer credentials", .enabled(if: getuid() == 0, "setpriv needs root to become another user"))
struct PeerCredentialsTests {
    /// `nobody` on Debian and Ubuntu, and the kernel's overflow uid: present on every Linux.
    static let nobody: UInt32 = 65534

    /// Starts aiotaskd with `arguments` (or `config`) in a directory, and with a socket, that everyone may use.
    static func startOpenDaemon(arguments: [String] = [], config: String? = nil) async throws -> RunningDaemon {
        let directory = try makeTemporaryDirectory()
        #expect(chmod(directory, 0o755) == 0)
        let daemon = try await RunningDaemon.start(arguments: arguments, config: config, in: directory)
        // What SocketMode=0666 would give: the file mode lets everyone connect.
        #expect(chmod(daemon.socket, 0o666) == 0)
        return daemon
    }

    /// Runs the `aiotask` CLI with `arguments` as uid and gid `nobody`, with `groups` as its supplementary groups
    /// (none by default); returns its output and its pid (`setpriv` executes the CLI in its own process).
    static func runCLIAsNobody(_ arguments: [String], groups: [UInt32] = []) async throws -> (CommandOutput, pid_t) {
        let groupOption =
            groups.isEmpty ? "--clear-groups" : "--groups=" + groups.map(String.init).joined(separator: ",")
        let process = try SpawnedProcess.spawn(
            "/usr/bin/setpriv",
            ["--reuid=\(nobody)", "--regid=\(nobody)", groupOption, Products.aiotask] + arguments,
            removing: ["AIOTASK_SERVER"]
        )
        let exit = try await process.wait(limit: .seconds(20))
        return (
            CommandOutput(exit: exit, standardOutput: process.standardOutput, standardError: process.standardError),
            process.pid
        )
    }

    /// The number of tasks the daemon received (`tasks.submitted` of `aiotask status --json`, run as root).
    static func tasksSubmitted(_ daemon: RunningDaemon) async throws -> Int {
        let status = try await runCLI(["status", "--server", daemon.server, "--json"])
        #expect(status.exit == .exited(0), "stderr: \(status.standardError)")
        let json = try JSONSerialization.jsonObject(with: Data(status.standardOutput.utf8)) as? [String: Any]
        let tasks = try #require(json?["tasks"] as? [String: Any], "no tasks in \(status.standardOutput)")
        return try #require(tasks["submitted"] as? Int)
    }

    /// The daemon's log line that contains every one of `parts`, if there is one.
    static func logLine(of daemon: RunningDaemon, containing parts: String...) -> String? {
        daemon.process.standardError.split(separator: "\n").map(String.init).first { line in
            parts.allSatisfy(line.contains)
        }
    }

    @Test("a listed user runs tasks, and each entry of its task names its uid, gid and pid")
    func allowedUser() async throws {
        let daemon = try await Self.startOpenDaemon(
            arguments: ["--allow-users", "root,nobody", "--workers", "1", "--log-level", "debug"]
        )
        try await daemon.stopAfter {
            let (submit, pid) = try await Self.runCLIAsNobody(["submit", "--server", daemon.server, "hello"])
            #expect(submit.exit == .exited(0), "stderr: \(submit.standardError)")
            #expect(submit.standardOutput == "hello")
            // CLIENT_UID, CLIENT_GID and CLIENT_PID in the journal; the same metadata on stderr.
            let entry = Self.logLine(of: daemon, containing: "task done", "client_uid=\(Self.nobody)")
            #expect(entry?.contains("client_gid=\(Self.nobody)") == true, "\(entry ?? daemon.process.standardError)")
            #expect(entry?.contains("client_pid=\(pid)") == true, "\(entry ?? daemon.process.standardError)")
            #expect(entry?.contains("task_id=") == true)
        }
    }

    @Test("an unlisted user is told permission denied, nothing it sends runs, and the refusal names uid, gid and pid")
    func refusedUser() async throws {
        let daemon = try await Self.startOpenDaemon(arguments: ["--allow-users", "root", "--workers", "1"])
        try await daemon.stopAfter {
            let (submit, pid) = try await Self.runCLIAsNobody(["submit", "--server", daemon.server, "hello"])
            #expect(submit.exit == .exited(2))
            #expect(submit.standardOutput.isEmpty)
            #expect(
                submit.standardError.contains(
                    "aiotask: the server refused this user: uid \(Self.nobody) (gid \(Self.nobody)) is not allowed on "
                        + "\(daemon.server) (allow-users, allow-groups)"
                ),
                "stderr: \(submit.standardError)"
            )
            let entry = Self.logLine(of: daemon, containing: "refusing connection", "client_pid=\(pid)")
            #expect(entry?.contains("warning") == true, "\(daemon.process.standardError)")
            #expect(entry?.contains("client_uid=\(Self.nobody)") == true)
            #expect(entry?.contains("client_gid=\(Self.nobody)") == true)
            #expect(entry?.contains("socket=\(daemon.server)") == true)

            // A legacy client sends its task at once, without HELLO: it is closed unread, and told nothing.
            let (legacy, _) = try await Self.runCLIAsNobody(["submit", "--legacy", "--server", daemon.server, "hello"])
            #expect(legacy.exit == .exited(2), "stderr: \(legacy.standardError)")
            #expect(legacy.standardOutput.isEmpty)

            #expect(try await Self.tasksSubmitted(daemon) == 0, "a refused client's task was received")
            let allowed = try await runCLI(["submit", "--server", daemon.server, "root's"])
            #expect(allowed.exit == .exited(0), "stderr: \(allowed.standardError)")
            #expect(try await Self.tasksSubmitted(daemon) == 1)
        }
    }

    @Test("a member of a listed group is let in by a supplementary group; without it, refused")
    func supplementaryGroup() async throws {
        let daemon = try await Self.startOpenDaemon(arguments: ["--allow-groups", "4242", "--workers", "1"])
        try await daemon.stopAfter {
            let (member, _) = try await Self.runCLIAsNobody(
                ["submit", "--server", daemon.server, "member"],
                groups: [27, 4242]
            )
            #expect(member.exit == .exited(0), "stderr: \(member.standardError)")
            #expect(member.standardOutput == "member")

            let (stranger, _) = try await Self.runCLIAsNobody(["submit", "--server", daemon.server, "stranger"])
            #expect(stranger.exit == .exited(2))
            #expect(stranger.standardError.contains("the server refused this user"), "\(stranger.standardError)")
        }
    }

    @Test("a reload that takes a user off the list refuses its new connections, and its open one carries on")
    func reload() async throws {
        let daemon = try await Self.startOpenDaemon(
            config: """
                listen = unix:{SOCKET}
                handler = sleep
                workers = 2
                allow-users = root, nobody
                """
        )
        try await daemon.stopAfter {
            // A task of 4 s on a connection made while nobody is listed.
            async let running = Self.runCLIAsNobody(["submit", "--server", daemon.server, "4000"])
            try await withTimeout(.seconds(15)) {
                while try await Self.tasksSubmitted(daemon) < 1 {
                    try await Task.sleep(for: .milliseconds(20))
                }
            }
            try daemon.writeConfig(
                """
                listen = unix:{SOCKET}
                handler = sleep
                workers = 2
                allow-users = root
                """
            )
            try await daemon.reload(count: 1)

            let (refused, _) = try await Self.runCLIAsNobody(["submit", "--server", daemon.server, "1"])
            #expect(refused.exit == .exited(2))
            #expect(refused.standardError.contains("the server refused this user"), "\(refused.standardError)")

            let (carriedOn, _) = try await running
            #expect(carriedOn.exit == .exited(0), "stderr: \(carriedOn.standardError)")
            #expect(carriedOn.standardOutput == "4000")
        }
    }
}

/// `allow-users` in an embedded server, with this test process as the client: it is refused when another user is
/// listed, which also shows that root (as the tests run in CI) is not let in unless listed.
@Suite("Unix socket peer credentials, in process")
struct PeerCredentialsInProcessTests {
    @Test(
        "a refused connection is counted by reason, logged with uid, gid and pid, never registered; TCP is not checked"
    )
    func refusedAndCounted() async throws {
        let other: UInt32 = getuid() == 65534 ? 65533 : 65534
        let (server, metrics) = try await TestServer.startWithMetrics(handler: .builtin("echo"), workers: 1) {
            $0.peerPolicy = PeerPolicy(users: [other])
            $0.listenAddresses.append(.tcp(host: "127.0.0.1", port: 0))
        }
        try await withTimeout {
            let error = await #expect(throws: AiotaskClientError.self) { _ = try await server.client() }
            #expect(error?.code == .permissionDenied, "\(String(describing: error))")
            #expect(
                error?.reason.hasPrefix("uid \(getuid()) (gid \(getgid())) is not allowed on \(server.address)") == true
            )

            let entry = await server.logs.first { $0.message.hasPrefix("refusing connection: permission denied") }
            #expect(entry.level == .warning)
            #expect(entry.metadata["client_uid"] == "\(getuid())")
            #expect(entry.metadata["client_gid"] == "\(getgid())")
            #expect(entry.metadata["client_pid"] == "\(getpid())")
            #expect(entry.metadata["socket"] == "\(server.address)")

            let samples = try await TestServer.samples(at: metrics)
            #expect(samples["aiotask_connections_refused_total{reason=\"peer_credentials\"}"] == 1)
            #expect(samples["aiotask_connections_accepted_total"] == 0, "a refused connection was registered")

            // TCP has no peer credentials: it is served, and its tasks name no uid.
            let tcp = try #require(server.server.localAddresses.first { $0.port != nil })
            let client = try await AiotaskClient.connect(to: .tcp(host: "127.0.0.1", port: tcp.port!))
            #expect(String(buffer: try await client.submit(ByteBuffer(string: "over tcp"))) == "over tcp")
            try await client.close()
        }
        try await server.stop()
    }
}
