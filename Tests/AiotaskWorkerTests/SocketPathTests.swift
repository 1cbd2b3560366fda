import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import NIOCore
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A Unix socket path is taken only from a process that is gone: never from a live server, never from a file that
/// is not a socket.
extension DaemonTests {
    @Test("a second aiotaskd on the Unix socket path of a live one exits 1 naming the path; the first keeps it")
    func liveSocketPathRefused() async throws {
        let daemon = try await RunningDaemon.start(arguments: ["--handler", "echo", "--workers", "1"])
        try await daemon.stopAfter {
            var before = stat()
            #expect(stat(daemon.socket, &before) == 0)
            let second = try SpawnedProcess.spawn(
                Products.aiotaskd,
                ["--listen", daemon.server, "--workers", "1"],
                removing: systemdVariables
            )
            #expect(try await second.wait() == .exited(1))
            #expect(
                second.standardError.contains("cannot listen on \(daemon.server): another process is listening there"),
                "stderr: \(second.standardError)"
            )
            // The path still names the first daemon's socket, and the first daemon still answers on it.
            var after = stat()
            #expect(stat(daemon.socket, &after) == 0)
            #expect(after.st_ino == before.st_ino, "the socket file was replaced")
            let submit = try await runCLI(["submit", "--server", daemon.server, "still mine"])
            #expect(submit.exit == .exited(0), "stderr: \(submit.standardError)")
            #expect(submit.standardOutput == "still mine")
        }
    }

    @Test("a socket file left behind by a process that is gone is replaced")
    func staleSocketReplaced() async throws {
        let directory = try makeTemporaryDirectory()
        try bindAndAbandonUnixSocket(at: directory + "/aiotask.sock")
        let daemon = try await RunningDaemon.start(arguments: ["--handler", "echo", "--workers", "1"], in: directory)
        try await daemon.stopAfter {
            let submit = try await runCLI(["submit", "--server", daemon.server, "fresh"])
            #expect(submit.exit == .exited(0), "stderr: \(submit.standardError)")
        }
    }

    @Test("aiotaskd refuses a listen path that is not a socket, and leaves the file")
    func nonSocketPathKept() async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/aiotask.sock"
        try "precious".write(toFile: path, atomically: true, encoding: .utf8)
        let daemon = try SpawnedProcess.spawn(
            Products.aiotaskd,
            ["--listen", "unix:\(path)", "--workers", "1"],
            removing: systemdVariables
        )
        #expect(try await daemon.wait() == .exited(1))
        #expect(
            daemon.standardError.contains("cannot listen on unix:\(path): the path exists and is not a socket"),
            "stderr: \(daemon.standardError)"
        )
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "precious")
    }
}

/// Binds a Unix socket at `path` and closes it without removing the file, as a process killed with SIGKILL
/// leaves it: connections to it are refused.
func bindAndAbandonUnixSocket(at path: String) throws {
    let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
    guard descriptor >= 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
    defer { close(descriptor) }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: path.utf8.prefix($0.count - 1)) }
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
        }
    }
    guard bound == 0, listen(descriptor, 1) == 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
}

/// What an application embedding the server can switch on when it cannot start.
@Suite("Start-up errors of an embedded server")
struct ServerErrorTests {
    @Test("a server that cannot listen throws a ServerError whose code is cannotListen, with the address and errno")
    func cannotListen() async throws {
        let server = try await TestServer.start(workers: 1)
        do {
            let configuration = ServerConfiguration(listenAddresses: [server.address], handler: .builtin("echo"))
            _ = try await AiotaskServer.start(configuration: configuration, logger: server.logs.logger)
            Issue.record("a second server took the path of a live one")
        } catch let error as ServerError {
            #expect(error.code == .cannotListen)
            #expect(error.listenError?.address == "\(server.address)")
            #expect(error.listenError?.code == EADDRINUSE)
            #expect(error.description == "cannot listen on \(server.address): another process is listening there")
            let underlying = try #require(error.listenError?.underlying as? UnixSocketPathError)
            #expect(underlying.code == .inUse)
        }
        try await server.stop()
    }

    @Test("a TCP address that cannot be bound keeps the system's error, not only its words")
    func keepsUnderlyingError() async throws {
        let server = try await TestServer.start(workers: 1, listen: [.tcp(host: "127.0.0.1", port: 0)])
        let port = try #require(server.server.localAddresses.compactMap(\.port).first)
        do {
            let configuration = ServerConfiguration(
                listenAddresses: [.tcp(host: "127.0.0.1", port: port)],
                handler: .builtin("echo")
            )
            _ = try await AiotaskServer.start(configuration: configuration, logger: server.logs.logger)
            Issue.record("a second server bound a port in use")
        } catch let error as ServerError {
            #expect(error.code == .cannotListen)
            let underlying = try #require(error.listenError?.underlying as? IOError)
            #expect(underlying.errnoCode == EADDRINUSE)
        }
        try await server.stop()
    }

    @Test("a server given nothing to listen on throws a ServerError whose code is nothingToListenOn")
    func nothingToListenOn() async throws {
        let configuration = ServerConfiguration(handler: .builtin("echo"))
        do {
            _ = try await AiotaskServer.start(configuration: configuration, logger: LogCapture().logger)
            Issue.record("a server started with nothing to listen on")
        } catch let error as ServerError {
            #expect(error.code == .nothingToListenOn)
            #expect(error.listenError == nil)
        }
    }
}
