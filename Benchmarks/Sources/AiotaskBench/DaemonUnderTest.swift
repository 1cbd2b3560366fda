import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import NIOCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// An `aiotaskd` started by the benchmark suite, listening on a free loopback TCP port and on a Unix socket.
final class DaemonUnderTest {
    /// Why the daemon could not be started or reached.
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    let process: SpawnedProcess
    let host: String
    let port: Int
    let socketPath: String
    /// The port of the daemon's `tls://` listener, when it was started with a certificate.
    let tlsPort: Int?
    var address: ServerAddress { .tcp(host: host, port: port) }
    var unixAddress: ServerAddress { .unix(path: socketPath) }
    var tlsAddress: ServerAddress? { tlsPort.map { .tls(host: host, port: $0) } }
    var pid: Int32 { process.pid }

    private init(process: SpawnedProcess, host: String, port: Int, socketPath: String, tlsPort: Int?) {
        self.process = process
        self.host = host
        self.port = port
        self.socketPath = socketPath
        self.tlsPort = tlsPort
    }

    /// Starts `executable` with `--listen` on a free port of `host` (a loopback address) plus `arguments`, and
    /// waits until it answers `HELLO`. With `tls`, it also listens on `tls://` on a second free port, serving that
    /// certificate.
    static func start(
        executable: String,
        arguments: [String],
        host: String = "127.0.0.1",
        tls: TestCertificates.Issued? = nil
    ) async throws -> DaemonUnderTest {
        let port = try freePort(host: host)
        let socketPath = NSTemporaryDirectory() + "aiotask-bench-\(getpid())-\(port).sock"
        var listen = ["--listen", "tcp://\(host):\(port)", "--listen", "unix:\(socketPath)"]
        var tlsPort: Int?
        if let tls {
            let port = try freePort(host: host)
            tlsPort = port
            listen += [
                "--listen", "tls://\(host):\(port)", "--tls-certificate", tls.certificate, "--tls-key", tls.key,
            ]
        }
        let process: SpawnedProcess
        do {
            process = try SpawnedProcess.spawn(executable, listen + arguments)
        } catch {
            throw Failure(description: "cannot start \(executable): \(error)")
        }
        let daemon = DaemonUnderTest(
            process: process,
            host: host,
            port: port,
            socketPath: socketPath,
            tlsPort: tlsPort
        )
        let deadline = ContinuousClock.now + .seconds(20)
        while true {
            if process.hasExited {
                let exit = try await process.wait()
                throw Failure(description: "\(executable) \(exit): \(process.standardError)")
            }
            if let client = try? await AiotaskClient.connect(to: daemon.address, connectTimeout: .seconds(2)) {
                try? await client.close()
                return daemon
            }
            if ContinuousClock.now > deadline {
                await daemon.stop()
                throw Failure(description: "\(executable) did not answer within 20 s: \(process.standardError)")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Connects a client to the daemon, on `eventLoop` if given.
    func connect(on eventLoop: (any EventLoop)? = nil) async throws -> AiotaskClient {
        try await AiotaskClient.connect(to: address, eventLoopGroup: eventLoop)
    }

    /// The daemon's resident set size in bytes, from `/proc/PID/status` (`VmRSS`).
    func residentBytes() throws -> Int {
        let text = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if fields.count >= 2, let kilobytes = Int(fields[1]) { return kilobytes * 1024 }
        }
        throw Failure(description: "no VmRSS in /proc/\(pid)/status")
    }

    /// Stops the daemon (SIGTERM: it drains) and waits for it, then removes its socket.
    func stop() async {
        process.signal(SIGTERM)
        _ = try? await process.wait(limit: .seconds(60))
        try? FileManager.default.removeItem(atPath: socketPath)
    }

    /// A TCP port on `host` (127.0.0.1 by default) that nothing listens on at the moment.
    static func freePort(host: String = "127.0.0.1") throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var address = loopback(port: 0, host: host)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0 else { throw Failure(description: "bind: \(String(cString: strerror(errno)))") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    static func loopback(port: Int, host: String = "127.0.0.1") -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        inet_pton(AF_INET, host, &address.sin_addr)
        return address
    }
}

/// Plain TCP connections that connect and then do nothing, for the memory cost of idle clients.
final class IdleConnections {
    private var descriptors: [CInt] = []

    /// Opens `count` connections to 127.0.0.1:`port`.
    init(count: Int, port: Int) throws {
        descriptors.reserveCapacity(count)
        var address = DaemonUnderTest.loopback(port: port)
        for _ in 0..<count {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else {
                let reason = String(cString: strerror(errno))
                closeAll()
                throw DaemonUnderTest.Failure(
                    description: "cannot open idle connection \(descriptors.count + 1): \(reason)"
                )
            }
            descriptors.append(fd)
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            guard connected == 0 else {
                let reason = String(cString: strerror(errno))
                closeAll()
                throw DaemonUnderTest.Failure(
                    description: "cannot connect idle connection \(descriptors.count): \(reason)"
                )
            }
        }
    }

    var count: Int { descriptors.count }

    private func closeAll() {
        for fd in descriptors { close(fd) }
        descriptors.removeAll()
    }

    deinit {
        for fd in descriptors { close(fd) }
    }
}

/// Raises this process's open-file limit to its hard limit (children inherit it); returns the new limit.
@discardableResult
func raiseOpenFileLimit() -> Int {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 0 }
    limit.rlim_cur = limit.rlim_max
    _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    return Int(limit.rlim_cur)
}
