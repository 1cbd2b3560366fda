import AiotaskTestSupport
import CAiotaskShims
import Foundation
import NIOConcurrencyHelpers

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// How a program started by a test ended.
enum ProcessExit: Hashable, Sendable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)

    init(waitStatus status: Int32) {
        self = status & 0x7f == 0 ? .exited((status >> 8) & 0xff) : .signaled(status & 0x7f)
    }

    var description: String {
        switch self {
        case .exited(let code): "exited with code \(code)"
        case .signaled(let signal): "killed by signal \(signal)"
        }
    }
}

/// A program a test started with `posix_spawn`: its stdout and stderr are collected as they come, and its exit
/// is awaited by its own pid (never `waitpid(-1)`, so the pool's own reaping is not disturbed).
///
/// The child runs in a process group of its own, with every signal at its default disposition and none
/// blocked, and inherits no descriptor of the test process but its three standard streams.
///
/// ```swift
/// let daemon = try SpawnedProcess.spawn(Products.aiotaskd, ["--listen", "unix:/tmp/x.sock"])
/// try await daemon.waitForStandardError(containing: "ready")
/// daemon.signal(SIGTERM)
/// #expect(try await daemon.wait() == .exited(0))
/// ```
final class SpawnedProcess: Sendable {
    let pid: pid_t
    let executable: String
    private let output: OutputCollector
    private let errors: OutputCollector
    private let exit: ExitWatcher

    private init(pid: pid_t, executable: String, output: OutputCollector, errors: OutputCollector, exit: ExitWatcher) {
        self.pid = pid
        self.executable = executable
        self.output = output
        self.errors = errors
        self.exit = exit
    }

    /// Starts `executable` (searched in `PATH` when it has no `/`) with `arguments`.
    ///
    /// - Parameters:
    ///   - environment: variables added to (or replacing) the test process's environment.
    ///   - removing: variables of the test process's environment not to pass on.
    ///   - standardInput: bytes the child reads on stdin, which then ends; nil for `/dev/null`.
    static func spawn(
        _ executable: String,
        _ arguments: [String] = [],
        environment: [String: String] = [:],
        removing: Set<String> = [],
        standardInput: [UInt8]? = nil
    ) throws -> SpawnedProcess {
        var variables = ProcessInfo.processInfo.environment.filter { !removing.contains($0.key) }
        variables.merge(environment) { $1 }

        let stdoutPipe = try makePipe()
        let stderrPipe = try makePipe()
        let stdinPipe = try standardInput.map { _ in try makePipe() }

        let spawned = Result { () throws(SpawnFailure) -> pid_t in
            try spawnInOwnProcessGroup(executable, arguments, environment: variables) { actions in
                if let stdinPipe {
                    posix_spawn_file_actions_adddup2(&actions, stdinPipe.reader, 0)
                } else {
                    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
                }
                posix_spawn_file_actions_adddup2(&actions, stdoutPipe.writer, 1)
                posix_spawn_file_actions_adddup2(&actions, stderrPipe.writer, 2)
            }
        }

        close(stdoutPipe.writer)
        close(stderrPipe.writer)
        if let stdinPipe { close(stdinPipe.reader) }
        if case .failure = spawned {
            close(stdoutPipe.reader)
            close(stderrPipe.reader)
            if let stdinPipe { close(stdinPipe.writer) }
        }
        let pid = try spawned.get()
        if let stdinPipe, let standardInput {
            Thread.detachNewThread {
                standardInput.withUnsafeBytes { bytes in
                    var offset = 0
                    while offset < bytes.count {
                        let written = write(stdinPipe.writer, bytes.baseAddress! + offset, bytes.count - offset)
                        if written < 0 && errno == EINTR { continue }
                        if written <= 0 { break }
                        offset += written
                    }
                }
                close(stdinPipe.writer)
            }
        }
        return SpawnedProcess(
            pid: pid,
            executable: executable,
            output: OutputCollector(reading: stdoutPipe.reader),
            errors: OutputCollector(reading: stderrPipe.reader),
            exit: ExitWatcher(pid: pid)
        )
    }

    /// Everything the child wrote to stdout so far.
    var standardOutput: String { output.text }
    /// Everything the child wrote to stderr so far.
    var standardError: String { errors.text }
    /// The raw bytes the child wrote to stdout so far.
    var standardOutputBytes: [UInt8] { output.bytes }

    /// Waits until the child's stderr contains `text`.
    ///
    /// - Throws: ``OutputEnded`` when stderr closes without it, ``TimedOut`` after `limit`.
    func waitForStandardError(containing text: String, limit: Duration = .seconds(20)) async throws {
        try await errors.wait(for: text, limit: limit)
    }

    /// Waits until the child's stdout contains `text`; see ``waitForStandardError(containing:limit:)``.
    func waitForStandardOutput(containing text: String, limit: Duration = .seconds(20)) async throws {
        try await output.wait(for: text, limit: limit)
    }

    /// Sends `signal` to the child.
    func signal(_ signal: Int32) {
        guard !exit.hasExited else { return }
        kill(pid, signal)
    }

    /// Waits for the child to exit and for its output to be read to the end.
    ///
    /// On timeout the child's process group is killed, the child reaped, and ``TimedOut`` thrown.
    @discardableResult
    func wait(limit: Duration = .seconds(20)) async throws -> ProcessExit {
        do {
            let status = try await withTimeout(limit) { [exit] in await exit.status() }
            try await withTimeout(limit) { [output, errors] in
                await output.finished()
                await errors.finished()
            }
            return status
        } catch {
            killGroup()
            _ = try? await withTimeout(.seconds(5)) { [exit] in await exit.status() }
            throw error
        }
    }

    /// Kills the child's process group; for cleanup after a failed test.
    func killGroup() {
        guard !exit.hasExited else { return }
        kill(-pid, SIGKILL)
        kill(pid, SIGKILL)
    }

    private static func makePipe() throws -> (reader: Int32, writer: Int32) {
        var fds: [Int32] = [-1, -1]
        // Close-on-exec, so that no other child of the test process holds a write end open.
        let result = aiotask_pipe(&fds, 1 << 16)
        guard result == 0 else { throw SpawnFailure(executable: "pipe", errno: -result) }
        return (fds[0], fds[1])
    }
}

/// A program could not be started.
struct SpawnFailure: Error, CustomStringConvertible {
    var executable: String
    var errno: Int32
    var description: String { "cannot start \(executable): \(String(cString: strerror(errno)))" }
}

/// A stream ended before the expected text appeared in it.
struct OutputEnded: Error, CustomStringConvertible {
    var expected: String
    var output: String
    var description: String { "output ended without '\(expected)'; it was:\n\(output)" }
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

/// Reaps one child by its pid on a thread of its own, and hands its exit status to whoever awaits it.
private final class ExitWatcher: Sendable {
    private let state = NIOLockedValueBox<(status: ProcessExit?, waiters: [CheckedContinuation<ProcessExit, Never>])>(
        (nil, [])
    )

    init(pid: pid_t) {
        Thread.detachNewThread { [self] in
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            let exit = ProcessExit(waitStatus: status)
            let waiters = state.withLockedValue { state in
                state.status = exit
                defer { state.waiters = [] }
                return state.waiters
            }
            for waiter in waiters { waiter.resume(returning: exit) }
        }
    }

    var hasExited: Bool { state.withLockedValue { $0.status != nil } }

    func status() async -> ProcessExit {
        await withCheckedContinuation { continuation in
            let status = state.withLockedValue { state -> ProcessExit? in
                if let status = state.status { return status }
                state.waiters.append(continuation)
                return nil
            }
            if let status { continuation.resume(returning: status) }
        }
    }
}

/// Starts `executable` the way the tests start every process: in a process group of its own, every signal at
/// its default disposition and none blocked, `fileActions` arranging its descriptors. Returns the pid, or
/// throws ``SpawnFailure``.
func spawnInOwnProcessGroup(
    _ executable: String,
    _ arguments: [String],
    environment: [String: String],
    fileActions: (inout posix_spawn_file_actions_t) -> Void
) throws(SpawnFailure) -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    fileActions(&actions)

    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var defaults = sigset_t()
    sigfillset(&defaults)
    var mask = sigset_t()
    sigemptyset(&mask)
    posix_spawnattr_setsigdefault(&attributes, &defaults)
    posix_spawnattr_setsigmask(&attributes, &mask)
    posix_spawnattr_setpgroup(&attributes, 0)
    posix_spawnattr_setflags(
        &attributes,
        Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETPGROUP)
    )

    let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
    let envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer {
        for pointer in argv { free(pointer) }
        for pointer in envp { free(pointer) }
    }
    var pid: pid_t = 0
    let result =
        executable.contains("/")
        ? posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        : posix_spawnp(&pid, executable, &actions, &attributes, argv, envp)
    guard result == 0 else { throw SpawnFailure(executable: executable, errno: result) }
    return pid
}
