import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A process's death as an event: a pidfd opened while the process is known to be alive, so the watch keeps
/// meaning that process even after its pid is reaped and reused. Works for processes that are not children of
/// the test (pool processes of a daemon, grandchildren of a handler).
final class ProcessDeathWatch: Sendable {
    let pid: pid_t
    private let descriptor: Int32

    /// Opens the watch; throws when no process has this pid (any more).
    init(pid: pid_t) throws {
        self.pid = pid
        let descriptor = Self.pidfdOpen(pid, 0)
        guard descriptor >= 0 else { throw WatchError(pid: pid, errno: errno) }
        self.descriptor = descriptor
    }

    deinit {
        close(descriptor)
    }

    /// Whether the process has not exited yet.
    var isAlive: Bool { !Self.poll(descriptor, milliseconds: 0) }

    /// Waits (on a thread of its own, so no Swift task is blocked) until the process exits or `limit` passes;
    /// returns whether it exited.
    func waitForExit(limit: Duration) async -> Bool {
        let milliseconds = Int32(
            clamping: limit.components.seconds * 1000 + limit.components.attoseconds / 1_000_000_000_000_000
        )
        return await withCheckedContinuation { continuation in
            Thread.detachNewThread { [self] in
                continuation.resume(returning: Self.poll(descriptor, milliseconds: milliseconds))
            }
        }
    }

    private static func poll(_ descriptor: Int32, milliseconds: Int32) -> Bool {
        var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        var result: Int32
        repeat {
            result = Glibc.poll(&entry, 1, milliseconds)
        } while result < 0 && errno == EINTR
        return result > 0
    }

    /// `pidfd_open(2)` through glibc's wrapper (glibc 2.36 and later); `syscall` itself is variadic and cannot be
    /// called from Swift.
    private static let pidfdOpen: @convention(c) (pid_t, UInt32) -> Int32 = {
        guard let symbol = dlsym(nil, "pidfd_open") else {
            return { _, _ in
                errno = ENOSYS
                return -1
            }
        }
        return unsafeBitCast(symbol, to: (@convention(c) (pid_t, UInt32) -> Int32).self)
    }()

    struct WatchError: Error, CustomStringConvertible {
        var pid: pid_t
        var errno: Int32
        var description: String { "cannot watch process \(pid): \(String(cString: strerror(errno)))" }
    }
}

/// Processes to kill should a test fail before they die by themselves.
final class Survivors: Sendable {
    private let watches = NIOLockedValueBox<[ProcessDeathWatch]>([])

    func add(_ more: [ProcessDeathWatch]) {
        watches.withLockedValue { $0 += more }
    }

    func kill() {
        for watch in watches.withLockedValue({ $0 }) where watch.isAlive { Glibc.kill(watch.pid, SIGKILL) }
    }
}

/// The descriptors a process holds, as the targets of its `/proc/PID/fd` links (`pipe:[…]`, `socket:[…]`, …).
func openDescriptors(of pid: pid_t) throws -> [Int32: String] {
    let directory = "/proc/\(pid)/fd"
    var targets: [Int32: String] = [:]
    for name in try FileManager.default.contentsOfDirectory(atPath: directory) {
        guard let descriptor = Int32(name) else { continue }
        targets[descriptor] = try? FileManager.default.destinationOfSymbolicLink(atPath: directory + "/" + name)
    }
    return targets
}

/// The children of `pid`, from `/proc/PID/task/*/children`.
func childProcesses(of pid: pid_t) -> [pid_t] {
    let directory = "/proc/\(pid)/task"
    let threads = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
    return threads.flatMap { thread -> [pid_t] in
        let text = (try? String(contentsOfFile: "\(directory)/\(thread)/children", encoding: .utf8)) ?? ""
        return text.split(separator: " ").compactMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }
}

extension AiotaskClient {
    /// Runs the chaos handler's `pid` command: the pid of the pool process that ran it.
    func workerPID() async throws -> pid_t {
        let answer = String(decoding: try await submit("pid"), as: UTF8.self)
        return try #require(pid_t(answer), "not a pid: \(answer)")
    }

    /// Waits until `condition` holds for the server's statistics, asking again every few milliseconds (the server
    /// announces no such change, so this is polled).
    @discardableResult
    func waitForInfo(_ condition: (ServerInfo) -> Bool) async throws -> ServerInfo {
        while true {
            let info = try await serverInfo()
            if condition(info) { return info }
            try await Task.sleep(for: .milliseconds(5))
        }
    }
}

extension TaskHandle {
    /// Awaits the task's failure; records an issue (and returns nil) when it succeeds or ends otherwise.
    func failure(sourceLocation: SourceLocation = #_sourceLocation) async -> TaskFailure? {
        do {
            let result = try await result()
            Issue.record("the task succeeded with '\(String(buffer: result))'", sourceLocation: sourceLocation)
            return nil
        } catch let failure as TaskFailure {
            return failure
        } catch {
            Issue.record("the task ended with \(error)", sourceLocation: sourceLocation)
            return nil
        }
    }

    /// Awaits the task's result as text.
    func text() async throws -> String {
        String(buffer: try await result())
    }
}

extension AiotaskClient {
    /// Sends a task given as text; see ``enqueue(_:timeout:)``.
    func enqueue(_ text: String, timeout: Duration? = nil) async throws -> TaskHandle {
        try await enqueue(ByteBuffer(string: text), timeout: timeout)
    }

    /// Runs a task that must fail, and returns its failure (recording an issue when it does not fail).
    func failure(
        of text: String,
        timeout: Duration? = nil,
        sourceLocation: SourceLocation = #_sourceLocation
    )
        async throws -> TaskFailure?
    {
        try await enqueue(text, timeout: timeout).failure(sourceLocation: sourceLocation)
    }
}

extension TestServer {
    /// The pid in the `worker_pid` metadata of a log entry, if it has one.
    static func workerPID(of entry: LogCapture.Entry) -> pid_t? {
        entry.metadata["worker_pid"].flatMap { pid_t($0) }
    }
}
