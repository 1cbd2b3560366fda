import AiotaskChildProcess
import Foundation
import NIOConcurrencyHelpers

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// How a program started by a test ended.
public enum ProcessExit: Hashable, Sendable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)

    /// Decodes a `waitpid` status word.
    public init(waitStatus status: Int32) {
        self = status & 0x7f == 0 ? .exited((status >> 8) & 0xff) : .signaled(status & 0x7f)
    }

    public var description: String {
        switch self {
        case .exited(let code): "exited with code \(code)"
        case .signaled(let signal): "killed by signal \(signal)"
        }
    }
}

/// A program a test started (a ``ChildProcess``, as the daemon starts its pool processes): its stdout and stderr
/// are collected as they come, and its exit is awaited by its own pid (never `waitpid(-1)`, so the pool's own
/// reaping is not disturbed), without a thread waiting for it.
///
/// The child runs in a process group of its own, with every signal at its default disposition and none
/// blocked, and inherits no descriptor of the test process but its three standard streams and the
/// `descriptors` given.
///
/// ```swift
/// let daemon = try SpawnedProcess.spawn(Products.aiotaskd, ["--listen", "unix:/tmp/x.sock"])
/// try await daemon.waitForStandardError(containing: "ready")
/// daemon.signal(SIGTERM)
/// #expect(try await daemon.wait() == .exited(0))
/// ```
public final class SpawnedProcess: Sendable {
    public var pid: pid_t { child.pid }
    public let executable: String
    private let child: ChildProcess
    private let output: OutputCollector
    private let errors: OutputCollector

    private init(executable: String, child: ChildProcess, output: OutputCollector, errors: OutputCollector) {
        self.executable = executable
        self.child = child
        self.output = output
        self.errors = errors
    }

    /// Starts `executable` (searched in `PATH` when it has no `/`) with `arguments`.
    ///
    /// - Parameters:
    ///   - environment: variables added to (or replacing) the test process's environment.
    ///   - removing: variables of the test process's environment not to pass on.
    ///   - standardInput: bytes the child reads on stdin, which then ends; nil for `/dev/null`.
    ///   - descriptors: descriptors the child gets as 3, 4, … (the caller keeps and closes its own).
    public static func spawn(
        _ executable: String,
        _ arguments: [String] = [],
        environment: [String: String] = [:],
        removing: Set<String> = [],
        standardInput: [UInt8]? = nil,
        descriptors: [Int32] = []
    ) throws -> SpawnedProcess {
        var variables = ProcessInfo.processInfo.environment.filter { !removing.contains($0.key) }
        variables.merge(environment) { $1 }

        // Close-on-exec pipes, so that no other child of the test process holds a write end open.
        let stdoutPipe = try ChildProcess.makePipe(size: 1 << 16)
        let stderrPipe: (reader: Int32, writer: Int32)
        do {
            stderrPipe = try ChildProcess.makePipe(size: 1 << 16)
        } catch {
            closeAll(stdoutPipe.reader, stdoutPipe.writer)
            throw error
        }
        let stdin: (reader: Int32, writer: Int32?)
        do {
            if standardInput != nil {
                let pipe = try ChildProcess.makePipe(size: 1 << 16)
                stdin = (pipe.reader, pipe.writer)
            } else {
                let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
                guard null >= 0 else { throw SpawnError(executable: "/dev/null", errno: errno) }
                stdin = (null, nil)
            }
        } catch {
            closeAll(stdoutPipe.reader, stdoutPipe.writer, stderrPipe.reader, stderrPipe.writer)
            throw error
        }

        let spawned = Result { () throws(SpawnError) in
            try ChildProcess.spawn(
                executable,
                arguments: arguments,
                environment: variables,
                descriptors: [stdin.reader, stdoutPipe.writer, stderrPipe.writer] + descriptors,
                searchingPath: true
            )
        }
        closeAll(stdoutPipe.writer, stderrPipe.writer, stdin.reader)
        let child: ChildProcess
        switch spawned {
        case .success(let started):
            child = started
        case .failure(let error):
            closeAll(stdoutPipe.reader, stderrPipe.reader)
            if let writer = stdin.writer { close(writer) }
            throw error
        }
        child.watchExit()
        if let writer = stdin.writer, let standardInput {
            Thread.detachNewThread {
                standardInput.withUnsafeBytes { bytes in
                    var offset = 0
                    while offset < bytes.count {
                        let written = write(writer, bytes.baseAddress! + offset, bytes.count - offset)
                        if written < 0 && errno == EINTR { continue }
                        if written <= 0 { break }
                        offset += written
                    }
                }
                close(writer)
            }
        }
        return SpawnedProcess(
            executable: executable,
            child: child,
            output: OutputCollector(reading: stdoutPipe.reader),
            errors: OutputCollector(reading: stderrPipe.reader)
        )
    }

    /// Everything the child wrote to stdout so far.
    public var standardOutput: String { output.text }
    /// Everything the child wrote to stderr so far.
    public var standardError: String { errors.text }
    /// The raw bytes the child wrote to stdout so far.
    public var standardOutputBytes: [UInt8] { output.bytes }
    /// Whether the child has exited (and been reaped).
    public var hasExited: Bool { child.hasExited }

    /// Waits until the child's stderr contains `text`.
    ///
    /// - Throws: ``OutputEnded`` when stderr closes without it, ``TimedOut`` after `limit`.
    public func waitForStandardError(containing text: String, limit: Duration = .seconds(20)) async throws {
        try await errors.wait(for: text, limit: limit)
    }

    /// Waits until the child's stdout contains `text`; see ``waitForStandardError(containing:limit:)``.
    public func waitForStandardOutput(containing text: String, limit: Duration = .seconds(20)) async throws {
        try await output.wait(for: text, limit: limit)
    }

    /// Sends `signal` to the child, unless it has exited.
    public func signal(_ signal: Int32) {
        child.signal(signal)
    }

    /// Waits for the child to exit and for its output to be read to the end.
    ///
    /// On timeout the child's process group is killed, the child reaped, and ``TimedOut`` thrown.
    @discardableResult
    public func wait(limit: Duration = .seconds(20)) async throws -> ProcessExit {
        do {
            let status = try await withTimeout(limit) { [child] in await child.exitStatus() }
            try await withTimeout(limit) { [output, errors] in
                await output.finished()
                await errors.finished()
            }
            return ProcessExit(waitStatus: status)
        } catch {
            killGroup()
            _ = try? await withTimeout(.seconds(5)) { [child] in await child.exitStatus() }
            throw error
        }
    }

    /// Kills the child's process group; for cleanup after a failed test.
    public func killGroup() {
        child.signalGroup(SIGKILL)
        child.signal(SIGKILL)
    }

    private static func closeAll(_ fds: Int32...) {
        for fd in fds { close(fd) }
    }
}

/// A stream ended before the expected text appeared in it.
public struct OutputEnded: Error, CustomStringConvertible {
    public var expected: String
    public var output: String

    public init(expected: String, output: String) {
        self.expected = expected
        self.output = output
    }

    public var description: String { "output ended without '\(expected)'; it was:\n\(output)" }
}

/// Reads one pipe to its end on a thread of its own, keeping every byte, and tells waiters what arrived.
private final class OutputCollector: Sendable {
    private struct State {
        var bytes: [UInt8] = []
        var isFinished = false
        var waiters: [(text: String, continuation: CheckedContinuation<Bool, Never>)] = []
        var finishWaiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = NIOLockedValueBox(State())

    init(reading fd: Int32) {
        Thread.detachNewThread { [self] in
            var chunk = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
                if count < 0 && errno == EINTR { continue }
                if count <= 0 { break }
                append(chunk[0..<count])
            }
            close(fd)
            finish()
        }
    }

    var bytes: [UInt8] { state.withLockedValue { $0.bytes } }
    var text: String { String(decoding: bytes, as: UTF8.self) }

    private func append(_ chunk: ArraySlice<UInt8>) {
        let ready = state.withLockedValue { state in
            state.bytes.append(contentsOf: chunk)
            let text = String(decoding: state.bytes, as: UTF8.self)
            var ready: [CheckedContinuation<Bool, Never>] = []
            state.waiters.removeAll { waiter in
                guard text.contains(waiter.text) else { return false }
                ready.append(waiter.continuation)
                return true
            }
            return ready
        }
        for continuation in ready { continuation.resume(returning: true) }
    }

    private func finish() {
        let (waiters, finishWaiters) = state.withLockedValue { state in
            state.isFinished = true
            defer {
                state.waiters = []
                state.finishWaiters = []
            }
            return (state.waiters.map(\.continuation), state.finishWaiters)
        }
        for continuation in waiters { continuation.resume(returning: false) }
        for continuation in finishWaiters { continuation.resume() }
    }

    func wait(for text: String, limit: Duration) async throws {
        let found = try await withTimeout(limit) { [self] in
            await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                let answer: Bool? = state.withLockedValue { state in
                    if String(decoding: state.bytes, as: UTF8.self).contains(text) { return true }
                    if state.isFinished { return false }
                    state.waiters.append((text, continuation))
                    return nil
                }
                if let answer { continuation.resume(returning: answer) }
            }
        }
        if !found { throw OutputEnded(expected: text, output: self.text) }
    }

    func finished() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = state.withLockedValue { state in
                if state.isFinished { return true }
                state.finishWaiters.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }
}
