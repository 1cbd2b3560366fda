import CAiotaskShims
import Foundation
import NIOConcurrencyHelpers

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A process started for the pool, with the supervisor's ends of its three standard streams.
///
/// The child runs in its own process group (its pid is the group id), with every signal at its default
/// disposition and no descriptor but 0, 1, 2 and, if given, its task claims as 3: listening sockets never leak
/// into it.
struct ChildProcess: Sendable {
    let pid: pid_t
    /// Write end of the child's stdin.
    let stdinWriter: CInt
    /// Read end of the child's stdout.
    let stdoutReader: CInt
    /// Read end of the child's stderr.
    let stderrReader: CInt
    /// The pool slot it serves (`AIOTASK_WORKER_INDEX`), which the processes it leaves behind carry too.
    var workerIndex: String? = nil

    /// Variables of the supervisor's own environment that must not reach pool processes.
    static let withheldEnvironment: Set<String> = [
        "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
    ]

    /// Starts `command` with `extraEnvironment` added to the supervisor's environment, and `claimsDescriptor`
    /// (unless nil) as its descriptor 3.
    static func spawn(
        _ command: ProcessCommand,
        extraEnvironment: [String: String],
        claimsDescriptor: CInt? = nil
    ) throws(SpawnError) -> ChildProcess {
        var environment = ProcessInfo.processInfo.environment.filter { !withheldEnvironment.contains($0.key) }
        environment.merge(command.environment) { $1 }
        environment.merge(extraEnvironment) { $1 }

        let stdin = try makePipe()
        let stdout: (reader: CInt, writer: CInt)
        let stderr: (reader: CInt, writer: CInt)
        do {
            stdout = try makePipe()
        } catch {
            closeAll(stdin.reader, stdin.writer)
            throw error
        }
        do {
            stderr = try makePipe()
        } catch {
            closeAll(stdin.reader, stdin.writer, stdout.reader, stdout.writer)
            throw error
        }

        let argv = [command.executable] + command.arguments
        let envp = environment.map { "\($0.key)=\($0.value)" }
        // Registered as a pool process in the same breath as it starts: the orphan reaper never takes it for an
        // orphan (see ``OrphanReaper/poolProcesses``).
        let pid = OrphanReaper.poolProcesses.withLockedValue { pool in
            let pid = withCStringArray(argv) { argvPointer in
                withCStringArray(envp) { envpPointer in
                    aiotask_spawn(
                        command.executable,
                        argvPointer,
                        envpPointer,
                        stdin.reader,
                        stdout.writer,
                        stderr.writer,
                        claimsDescriptor ?? -1
                    )
                }
            }
            if pid > 0 { pool.insert(pid) }
            return pid
        }
        closeAll(stdin.reader, stdout.writer, stderr.writer)
        guard pid > 0 else {
            closeAll(stdin.writer, stdout.reader, stderr.reader)
            throw SpawnError(executable: command.executable, errno: -pid)
        }
        return ChildProcess(
            pid: pid,
            stdinWriter: stdin.writer,
            stdoutReader: stdout.reader,
            stderrReader: stderr.reader,
            workerIndex: environment[WorkerRole.workerIndexKey]
        )
    }

    /// Sends `signal` to every process of the child's group; errors (the group is gone) are ignored.
    func signalGroup(_ signal: Int32) {
        _ = kill(-pid, signal)
    }

    /// Waits for the child on a thread of its own and reports how it ended.
    ///
    /// Before reaping it, every process left in its group is killed: the zombie still holds the group id, so
    /// no unrelated process can be hit, and no grandchild of the handler outlives it. Once it is reaped, the
    /// processes it left outside its group are killed too (``OrphanReaper``, in the daemon).
    func watchExit(_ onExit: @escaping @Sendable (ExitStatus) -> Void) {
        let pid = self.pid
        let workerIndex = self.workerIndex
        Thread.detachNewThread {
            var info = siginfo_t()
            while waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) != 0 && errno == EINTR {}
            _ = kill(-pid, SIGKILL)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            OrphanReaper.poolProcesses.withLockedValue { _ = $0.remove(pid) }
            OrphanReaper.poolProcessEnded(slot: workerIndex)
            onExit(ExitStatus(waitStatus: status))
        }
    }

    private static func makePipe() throws(SpawnError) -> (reader: CInt, writer: CInt) {
        var fds: [CInt] = [-1, -1]
        // Larger pipes let big tasks and results move in fewer system calls.
        let result = aiotask_pipe(&fds, 1 << 20)
        guard result == 0 else { throw SpawnError(executable: "pipe", errno: -result) }
        return (fds[0], fds[1])
    }

    private static func closeAll(_ fds: CInt...) {
        for fd in fds { close(fd) }
    }
}

/// A pool process could not be started.
struct SpawnError: Error, CustomStringConvertible {
    var executable: String
    var errno: Int32

    var description: String { "cannot start \(executable): \(String(cString: strerror(errno)))" }
}

/// Calls `body` with a NULL-terminated `char *const[]` built from `strings`.
private func withCStringArray<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    let pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) } + [nil]
    defer { pointers.forEach { free($0) } }
    return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
}
