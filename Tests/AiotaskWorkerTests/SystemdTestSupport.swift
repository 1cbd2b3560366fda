import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import CAiotaskShims
import Foundation
import NIOConcurrencyHelpers
import NIOPosix
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The `systemd-socket-activate` program of the systemd package, which passes `LISTEN_FDS` sockets to a program.
let systemdSocketActivate = "/usr/bin/systemd-socket-activate"

/// Whether the socket-activation tests can run here.
var systemdSocketActivateIsInstalled: Bool { access(systemdSocketActivate, X_OK) == 0 }

/// One sd_notify datagram: `KEY=value` assignments, one per line.
struct NotifyMessage: Sendable, CustomStringConvertible {
    let text: String
    let assignments: [String: String]
    /// When the datagram was received.
    let arrival: ContinuousClock.Instant

    init(_ text: String, arrival: ContinuousClock.Instant = .now) {
        self.text = text
        self.arrival = arrival
        var assignments: [String: String] = [:]
        for line in text.split(separator: "\n") {
            guard let equals = line.firstIndex(of: "=") else { continue }
            assignments[String(line[..<equals])] = String(line[line.index(after: equals)...])
        }
        self.assignments = assignments
    }

    subscript(key: String) -> String? { assignments[key] }

    var description: String { text.replacingOccurrences(of: "\n", with: " | ") }
}

/// The service manager's side of sd_notify: an `AF_UNIX` datagram socket bound in a fresh directory, whose
/// path goes into `NOTIFY_SOCKET`, and a thread that keeps every datagram in arrival order.
final class SystemdNotifyListener: Sendable {
    let path: String
    let directory: String
    private let descriptor: Int32
    private let isClosed = Atomic<Bool>(false)

    private struct Waiter {
        var id: Int
        var after: Int
        var predicate: @Sendable (NotifyMessage) -> Bool
        var continuation: CheckedContinuation<(Int, NotifyMessage)?, Never>
    }

    private struct State {
        var messages: [NotifyMessage] = []
        var waiters: [Waiter] = []
        var nextWaiterID = 0
    }

    private let state = NIOLockedValueBox(State())

    init() throws {
        directory = try makeTemporaryDirectory()
        path = directory + "/notify.sock"
        descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            buffer.copyBytes(from: Array(path.utf8) + [0])
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard bound == 0 else {
            let code = errno
            Glibc.close(descriptor)
            throw POSIXError(.init(rawValue: code) ?? .EIO)
        }
        Thread.detachNewThread { [self] in receiveLoop() }
    }

    /// Every datagram received so far, in order.
    var messages: [NotifyMessage] { state.withLockedValue { $0.messages } }

    /// Waits for the first datagram at position `after` or later that matches `predicate`, and returns its
    /// position and content.
    ///
    /// - Throws: ``TimedOut`` when none arrives within `limit`.
    @discardableResult
    func next(
        after: Int = 0,
        limit: Duration = .seconds(20),
        where predicate: @escaping @Sendable (NotifyMessage) -> Bool
    ) async throws -> (index: Int, message: NotifyMessage) {
        let found = try await withTimeout(limit) { [self] () async -> (Int, NotifyMessage)? in
            let id = state.withLockedValue { state in
                defer { state.nextWaiterID += 1 }
                return state.nextWaiterID
            }
            return await withTaskCancellationHandler {
                await withCheckedContinuation { continuation in
                    let immediate: (Int, NotifyMessage)?? = state.withLockedValue { state in
                        if let index = state.messages.indices.first(where: {
                            $0 >= after && predicate(state.messages[$0])
                        }) {
                            return (index, state.messages[index])
                        }
                        if isClosed.load(ordering: .acquiring) { return .some(nil) }
                        state.waiters.append(
                            Waiter(id: id, after: after, predicate: predicate, continuation: continuation)
                        )
                        return nil
                    }
                    if let immediate { continuation.resume(returning: immediate) }
                }
            } onCancel: {
                let waiter = state.withLockedValue { state -> Waiter? in
                    guard let position = state.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                    return state.waiters.remove(at: position)
                }
                waiter?.continuation.resume(returning: nil)
            }
        }
        guard let found else { throw NotifyListenerClosed(messages: messages) }
        return found
    }

    /// Waits for a datagram carrying `key=value` (among other assignments), at position `after` or later.
    @discardableResult
    func next(
        _ key: String,
        _ value: String = "1",
        after: Int = 0,
        limit: Duration = .seconds(20)
    ) async throws -> (index: Int, message: NotifyMessage) {
        try await next(after: after, limit: limit) { $0[key] == value }
    }

    /// Stops receiving and removes the socket's directory.
    func close() {
        guard !isClosed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        let waiters = state.withLockedValue { state in
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.continuation.resume(returning: nil) }
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func receiveLoop() {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while !isClosed.load(ordering: .acquiring) {
            var poller = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
            // A short poll lets the thread notice `close()`; datagrams are read as soon as they arrive.
            guard poll(&poller, 1, 100) > 0 else { continue }
            let count = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress!, $0.count, 0) }
            if count < 0 { continue }
            deliver(NotifyMessage(String(decoding: buffer[0..<count], as: UTF8.self)))
        }
        Glibc.close(descriptor)
    }

    private func deliver(_ message: NotifyMessage) {
        let ready = state.withLockedValue { state -> [(CheckedContinuation<(Int, NotifyMessage)?, Never>, Int)] in
            let index = state.messages.count
            state.messages.append(message)
            var ready: [(CheckedContinuation<(Int, NotifyMessage)?, Never>, Int)] = []
            state.waiters.removeAll { waiter in
                guard index >= waiter.after, waiter.predicate(message) else { return false }
                ready.append((waiter.continuation, index))
                return true
            }
            return ready
        }
        for (continuation, index) in ready { continuation.resume(returning: (index, message)) }
    }
}

/// The notify listener was closed while a test waited on it.
struct NotifyListenerClosed: Error, CustomStringConvertible {
    var messages: [NotifyMessage]
    var description: String { "notify socket closed; received: \(messages)" }
}

/// `aiotaskd` started by `systemd-socket-activate` on one listening socket, with its sd_notify captured.
///
/// `systemd-socket-activate` binds the socket, waits for the first connection attempt, then execs the daemon in
/// place: the daemon's pid is the one spawned.
struct SocketActivatedDaemon: Sendable {
    let process: SpawnedProcess
    let notifications: SystemdNotifyListener
    var pid: pid_t { process.pid }

    /// Starts `aiotaskd arguments` behind `systemd-socket-activate -l listen`.
    ///
    /// - Parameters:
    ///   - listen: the `-l` address: `127.0.0.1:PORT`, `[::1]:PORT` or a socket path.
    ///   - fdname: the `--fdname` the daemon should see, if any.
    ///   - datagram: pass a datagram socket (`--datagram`) instead of a stream socket.
    ///   - environment: further variables for the daemon (`-E`), besides `NOTIFY_SOCKET`.
    static func start(
        listen: String,
        fdname: String? = nil,
        datagram: Bool = false,
        environment: [String: String] = [:],
        _ arguments: [String]
    ) throws -> SocketActivatedDaemon {
        let notifications = try SystemdNotifyListener()
        var activatorArguments = ["-l", listen]
        if datagram { activatorArguments.append("--datagram") }
        if let fdname { activatorArguments.append("--fdname=\(fdname)") }
        // systemd-socket-activate passes on only the variables given with -E: forward the sanitizers' options too,
        // so that a sanitized daemon runs as the rest of a sanitized test run does (scripts/test-sanitizers).
        let sanitizerOptions = ProcessInfo.processInfo.environment.filter { $0.key.hasSuffix("SAN_OPTIONS") }
        let variables = sanitizerOptions.merging(["NOTIFY_SOCKET": notifications.path]) { $1 }
            .merging(environment) { $1 }
        for (key, value) in variables.sorted(by: { $0.key < $1.key }) {
            activatorArguments += ["-E", "\(key)=\(value)"]
        }
        do {
            let process = try SpawnedProcess.spawn(
                systemdSocketActivate,
                activatorArguments + [Products.aiotaskd] + arguments
            )
            return SocketActivatedDaemon(process: process, notifications: notifications)
        } catch {
            notifications.close()
            throw error
        }
    }

    /// Waits until the activator listens, i.e. has logged `Listening on …`.
    func waitUntilListening() async throws {
        try await process.waitForStandardError(containing: "Listening on ", limit: .seconds(10))
    }

    /// Sends SIGTERM and waits for the exit.
    func stop(limit: Duration = .seconds(20)) async throws -> ProcessExit {
        process.signal(SIGTERM)
        return try await process.wait(limit: limit)
    }

    /// Kills whatever is left and closes the notify listener; for the end of every test.
    func cleanUp() {
        process.killGroup()
        notifications.close()
    }
}

/// Free ports and `/proc` views of processes, for the socket-activation tests.
enum SystemdTestKit {
    /// The event loops of these tests' clients: their own, so that a loop of the shared group kept busy by
    /// another test in this process cannot hold up a client here.
    static let eventLoopGroup = MultiThreadedEventLoopGroup(numberOfThreads: 2)

    /// Connects a client on ``eventLoopGroup``.
    static func connect(to address: ServerAddress) async throws -> AiotaskClient {
        try await AiotaskClient.connect(to: address, eventLoopGroup: eventLoopGroup, connectTimeout: .seconds(20))
    }

    /// A port no socket of `type` uses right now on `host` (bind port 0, read it, close).
    static func freePort(host: String = "127.0.0.1", type: Int32 = Int32(SOCK_STREAM.rawValue)) throws -> Int {
        let family = host.contains(":") ? AF_INET6 : AF_INET
        let descriptor = socket(family, type | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        defer { close(descriptor) }
        if family == AF_INET6 {
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            inet_pton(AF_INET6, host, &address.sin6_addr)
            try withUnsafePointer(to: &address) {
                try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    guard bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) == 0 else {
                        throw POSIXError(.init(rawValue: errno) ?? .EIO)
                    }
                }
            }
            var bound = sockaddr_in6()
            var length = socklen_t(MemoryLayout<sockaddr_in6>.size)
            _ = withUnsafeMutablePointer(to: &bound) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
            }
            return Int(UInt16(bigEndian: bound.sin6_port))
        }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        inet_pton(AF_INET, host, &address.sin_addr)
        try withUnsafePointer(to: &address) {
            try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                guard bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 else {
                    throw POSIXError(.init(rawValue: errno) ?? .EIO)
                }
            }
        }
        var bound = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &bound) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        return Int(UInt16(bigEndian: bound.sin_port))
    }

    /// The children of every thread of `pid` (`/proc/PID/task/*/children`).
    static func children(of pid: pid_t) -> [pid_t] {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        return tasks.flatMap { task -> [pid_t] in
            let text = (try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/children", encoding: .utf8)) ?? ""
            return text.split(separator: " ").compactMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        }
    }

    /// The targets of `/proc/PID/fd/*` (`socket:[INODE]`, `pipe:[INODE]`, paths, …), by descriptor.
    static func descriptors(of pid: pid_t) -> [Int32: String] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []
        var targets: [Int32: String] = [:]
        for entry in entries {
            guard let fd = Int32(entry) else { continue }
            var buffer = [CChar](repeating: 0, count: 256)
            let length = readlink("/proc/\(pid)/fd/\(entry)", &buffer, buffer.count - 1)
            guard length > 0 else { continue }
            targets[fd] = String(decoding: buffer[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        return targets
    }

    /// Whether one of `pid`'s epoll instances watches descriptor `fd` (from `/proc/PID/fdinfo`), i.e. the
    /// process's event loop has taken the socket on.
    static func epollWatches(pid: pid_t, descriptor fd: Int32) -> Bool {
        descriptors(of: pid).contains { descriptor, target in
            guard target == "anon_inode:[eventpoll]",
                let info = try? String(contentsOfFile: "/proc/\(pid)/fdinfo/\(descriptor)", encoding: .utf8)
            else { return false }
            return info.split(separator: "\n").contains { line in
                let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
                return words.count >= 2 && words[0] == "tfd:" && words[1] == "\(fd)"
            }
        }
    }

    /// Connects to the daemon once and hangs up: the first connection makes `systemd-socket-activate` exec it,
    /// and the handshake answering proves it serves.
    static func connectOnce(to address: ServerAddress) async throws {
        let client = try await connect(to: address)
        try await client.close()
    }
}

/// A program started with a listening socket as descriptor 3 and `LISTEN_FDS=1`, as a service manager would,
/// but with the `LISTEN_PID` and other variables a test chooses. Its stderr is collected; stdin is `/dev/null`.
final class PassedSocketProcess: Sendable {
    private let process: SpawnedProcess
    var pid: pid_t { process.pid }

    /// Starts `executable` with `arguments` and exactly `environment`.
    init(_ executable: String, _ arguments: [String], environment: [String: String], socket: Int32) throws {
        // The child's descriptor 3 is a copy of the socket: as SD_LISTEN_FDS_START, and without close-on-exec.
        process = try SpawnedProcess.spawn(
            executable,
            arguments,
            environment: environment,
            removing: Set(ProcessInfo.processInfo.environment.keys),
            descriptors: [socket]
        )
    }

    /// Waits for the exit; returns how it ended and everything written to stderr. Kills the program on timeout.
    func wait(limit: Duration = .seconds(20)) async throws -> (exit: ProcessExit, standardError: String) {
        let exit = try await process.wait(limit: limit)
        return (exit, process.standardError)
    }
}

/// A listening stream socket on 127.0.0.1 (any port), close-on-exec, for handing to a child as descriptor 3.
func makeListeningTCPSocket() throws -> Int32 {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard descriptor >= 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
    }
    guard bound == 0, listen(descriptor, 16) == 0 else {
        let code = errno
        close(descriptor)
        throw POSIXError(.init(rawValue: code) ?? .EIO)
    }
    return descriptor
}

/// Sends one UDP datagram to `127.0.0.1:port`.
func sendUDPDatagram(to port: Int, _ text: String = "wake up") throws {
    let descriptor = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard descriptor >= 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
    defer { close(descriptor) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = UInt16(port).bigEndian
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let sent = Array(text.utf8).withUnsafeBytes { bytes in
        withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                sendto(descriptor, bytes.baseAddress, bytes.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
    }
    guard sent >= 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
}
