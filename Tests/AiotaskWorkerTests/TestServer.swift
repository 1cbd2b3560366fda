import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import Logging
import NIOCore

@testable import AiotaskServer
@testable import AiotaskWorker

/// The executables this package builds, found next to the test binary.
enum Products {
    static let directory = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
        .path

    static var aiotaskd: String { directory + "/aiotaskd" }
    static var aiotask: String { directory + "/aiotask" }
    static var exampleWorker: String { directory + "/aiotask-example-worker" }

    /// The repository's root, for example handlers and docs.
    static let repositoryRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
}

extension ProcessCommand {
    /// A built-in handler of aiotaskd (`echo`, `sha256`, `chaos`, …) as the pool's program.
    static func builtin(_ name: String) -> ProcessCommand {
        ProcessCommand(
            executable: Products.aiotaskd,
            environment: [PoolProcessRole.environmentKey: PoolProcessRole.handler.rawValue, "AIOTASK_BUILTIN": name],
            displayName: name
        )
    }

    /// An external handler program, started through aiotaskd's parent-death trampoline as in production.
    static func program(_ path: String, _ arguments: [String] = []) -> ProcessCommand {
        ProcessCommand(
            executable: Products.aiotaskd,
            arguments: [path] + arguments,
            environment: [PoolProcessRole.environmentKey: PoolProcessRole.exec.rawValue],
            displayName: "exec:\(path)"
        )
    }
}

/// An in-process worker on a fresh Unix socket (and optionally TCP), with its log captured.
struct TestServer: Sendable {
    let server: AiotaskServer
    let address: ServerAddress
    let logs: LogCapture
    let directory: String

    /// Starts a worker running `handler`, on the socket `aiotask.sock` of `directory` (a new one by default);
    /// `configure` may change any setting.
    static func start(
        handler: ProcessCommand = .builtin("echo"),
        workers: Int = 2,
        listen extra: [ServerAddress] = [],
        in directory: String? = nil,
        configure: (inout ServerConfiguration) -> Void = { _ in }
    ) async throws -> TestServer {
        let directory = try directory ?? makeTemporaryDirectory()
        let address = ServerAddress.unix(path: directory + "/aiotask.sock")
        var configuration = ServerConfiguration(listenAddresses: [address] + extra, handler: handler, workers: workers)
        configuration.killGracePeriod = .milliseconds(500)
        configuration.drainTimeout = .seconds(5)
        configure(&configuration)
        let logs = LogCapture()
        let server = try await AiotaskServer.start(configuration: configuration, logger: logs.logger)
        return TestServer(server: server, address: address, logs: logs, directory: directory)
    }

    /// A client connected to the worker's Unix socket.
    func client() async throws -> AiotaskClient {
        try await AiotaskClient.connect(to: address)
    }

    /// Shuts the worker down and removes its directory.
    func stop() async throws {
        try await server.shutdown()
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Waits until the pool has all its processes alive again.
    func waitForFullPool(limit: Duration = .seconds(10)) async throws {
        try await withTimeout(limit) {
            while true {
                let info = try await server.info()
                if info.workers.alive == info.workers.configured && info.workers.busy == 0 { return }
                try await Task.sleep(for: .milliseconds(10))
            }
        }
    }
}

/// A fresh directory under the system's temporary directory.
func makeTemporaryDirectory() throws -> String {
    var template = Array((NSTemporaryDirectory() + "aiotask-test-XXXXXX").utf8CString)
    guard let path = mkdtemp(&template) else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
    return String(cString: path)
}
