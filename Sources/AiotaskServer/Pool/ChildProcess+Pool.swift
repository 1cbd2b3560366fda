import AiotaskChildProcess
import Foundation
import NIOConcurrencyHelpers

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The supervisor's ends of a pool process's three standard streams.
struct PoolProcessPipes: Sendable {
    /// Write end of the process's stdin.
    let stdinWriter: CInt
    /// Read end of the process's stdout.
    let stdoutReader: CInt
    /// Read end of the process's stderr.
    let stderrReader: CInt
}

extension ChildProcess {
    /// Variables of the supervisor's own environment that must not reach pool processes.
    static let withheldEnvironment: Set<String> = [
        "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
    ]

    /// Starts a pool process running `command`, with `extraEnvironment` added to the supervisor's environment and
    /// `claimsDescriptor` (unless nil) as its descriptor 3: no other descriptor of the supervisor (listening
    /// sockets, other processes' pipes) reaches it. With a `confinement` it enters that Landlock ruleset first.
    ///
    /// It is registered as a pool process in the same breath as it starts, so the orphan reaper never takes it
    /// for an orphan (see ``OrphanReaper/poolProcesses``); ``watchPoolProcessExit(slot:_:)`` takes it off.
    static func spawnPoolProcess(
        _ command: ProcessCommand,
        extraEnvironment: [String: String],
        claimsDescriptor: CInt? = nil,
        confinement: LandlockRuleset? = nil
    ) throws(SpawnError) -> (child: ChildProcess, pipes: PoolProcessPipes) {
        var environment = ProcessInfo.processInfo.environment.filter { !withheldEnvironment.contains($0.key) }
        environment.merge(command.environment) { $1 }
        environment.merge(extraEnvironment) { $1 }

        // Larger pipes let big tasks and results move in fewer system calls.
        let stdin = try makePipe(size: 1 << 20)
        let stdout: (reader: CInt, writer: CInt)
        let stderr: (reader: CInt, writer: CInt)
        do {
            stdout = try makePipe(size: 1 << 20)
        } catch {
            closeAll(stdin.reader, stdin.writer)
            throw error
        }
        do {
            stderr = try makePipe(size: 1 << 20)
        } catch {
            closeAll(stdin.reader, stdin.writer, stdout.reader, stdout.writer)
            throw error
        }
        let descriptors = [stdin.reader, stdout.writer, stderr.writer] + (claimsDescriptor.map { [$0] } ?? [])
        let spawned = OrphanReaper.poolProcesses.withLockedValue { pool in
            let spawned = Result { () throws(SpawnError) in
                try spawn(
                    command.executable,
                    arguments: command.arguments,
                    environment: environment,
                    descriptors: descriptors,
                    confinement: confinement
                )
            }
            if case .success(let child) = spawned { pool.insert(child.pid) }
            return spawned
        }
        closeAll(stdin.reader, stdout.writer, stderr.writer)
        switch spawned {
        case .success(let child):
            let pipes = PoolProcessPipes(
                stdinWriter: stdin.writer,
                stdoutReader: stdout.reader,
                stderrReader: stderr.reader
            )
            return (child, pipes)
        case .failure(let error):
            closeAll(stdin.writer, stdout.reader, stderr.reader)
            throw error
        }
    }

    /// Watches for the exit of a pool process of slot `slot` and reports how it ended, on the exit queue (no
    /// thread waits for it: see ``ChildProcess/watchExit(reaping:_:)``).
    ///
    /// Before reaping it, every process left in its group is killed: the zombie still holds the group id, so
    /// no unrelated process can be hit, and no grandchild of the handler outlives it. It is reaped and taken off
    /// ``OrphanReaper/poolProcesses`` under that set's lock, so the orphan reaper, which never reaps a pid of the
    /// set, cannot take its status first and no new pool process with its pid is taken off. Once it is reaped,
    /// the processes it left outside its group are killed too (``OrphanReaper``, in the daemon).
    func watchPoolProcessExit(slot: String?, _ onExit: @escaping @Sendable (ExitStatus) -> Void) {
        let pid = self.pid
        watchExit(
            reaping: { reap in
                _ = kill(-pid, SIGKILL)
                return OrphanReaper.poolProcesses.withLockedValue { pool in
                    let status = reap()
                    pool.remove(pid)
                    return status
                }
            },
            { status in
                OrphanReaper.poolProcessEnded(slot: slot)
                onExit(ExitStatus(waitStatus: status))
            }
        )
    }

    private static func closeAll(_ fds: CInt...) {
        for fd in fds { close(fd) }
    }
}
