import AiotaskProtocol
import AiotaskServer
import CAiotaskShims
import NIOCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// What a process started by the pool is to do, told by the daemon through `AIOTASK_ROLE`.
///
/// Any executable that links this library checks for a role first thing (`Daemon.main(handler:)` does), so
/// the pool can re-execute it as a pool process.
public enum PoolProcessRole: String, Sendable {
    /// Serve tasks with the executable's Swift handler on stdin and stdout.
    case handler
    /// Arm the parent-death signal, then `exec` the external handler program named by the arguments.
    case exec

    static let environmentKey = PoolProcessEnvironment.roleKey
    static let daemonPIDKey = PoolProcessEnvironment.daemonPIDKey
    /// The pool slot a process serves, for the handler's own logging.
    static let workerIndexKey = PoolProcessEnvironment.workerIndexKey

    /// The path that re-executes the running binary, even after its file was replaced by an upgrade.
    static let currentExecutablePath = PoolProcessEnvironment.currentExecutablePath

    /// The role this process was started in, or nil when it is not a pool process.
    public static var current: PoolProcessRole? {
        guard let value = getenv(environmentKey) else { return nil }
        return PoolProcessRole(rawValue: String(cString: value))
    }

    /// Ties this process's life to the daemon's, returns to the open-file limit the daemon started with,
    /// and clears the role from the environment, so that programs the handler starts are not mistaken for pool
    /// processes.
    ///
    /// The kernel kills this process when the daemon's spawning thread exits; the parent pid check closes
    /// the window in which the daemon died before the signal was armed. Returns false if it did: the process
    /// has nothing to serve and is to end with status 0.
    static func attachToSupervisor() -> Bool {
        _ = aiotask_set_parent_death_signal(SIGKILL)
        if let expected = getenv(daemonPIDKey).flatMap({ pid_t(String(cString: $0)) }), getppid() != expected {
            return false
        }
        OpenFileLimit.restoreChildSoftLimit()
        unsetenv(environmentKey)
        unsetenv(daemonPIDKey)
        return true
    }

    /// Replaces this process with the external handler program given as arguments. Returns only if it cannot,
    /// with the exit status for the process.
    static func execExternalHandler(arguments: [String]) -> Int32 {
        guard attachToSupervisor() else { return 0 }
        guard let program = arguments.first else {
            StandardError.writeLine("aiotask: no handler program given")
            return 127
        }
        let pointers: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        // `exec` keeps the calling thread's signal mask and every ignored signal. This code runs on a thread of
        // Swift's concurrency runtime, which blocks most signals: without the reset the program would start with
        // SIGTERM blocked, and a timeout or cancel could only end it with SIGKILL after the kill grace.
        aiotask_reset_signals()
        execv(program, pointers)
        let reason = String(cString: strerror(errno))
        StandardError.writeLine("aiotask: cannot execute handler program \(program): \(reason)")
        return 127
    }

    /// Serves tasks with `handler`, which is not given their context; otherwise as the form taking a
    /// ``TaskContextHandler``.
    static func serveTasks(with handler: @escaping TaskHandler) async -> Int32 {
        await serveTasks(with: { task, _ in try await handler(task) } as TaskContextHandler)
    }

    /// Serves tasks with `handler` on the link the daemon gave as stdin and stdout, until the daemon
    /// closes it; returns the exit status for the process.
    ///
    /// The link is moved off descriptors 0 and 1 first, and stdout is pointed at stderr, so stray prints from
    /// handler code land in the daemon's log instead of corrupting the framing.
    static func serveTasks(with handler: @escaping TaskContextHandler) async -> Int32 {
        guard attachToSupervisor() else { return 0 }
        let input = fcntl(0, F_DUPFD_CLOEXEC, 3)
        let output = fcntl(1, F_DUPFD_CLOEXEC, 3)
        let devNull = open("/dev/null", O_RDONLY)
        dup2(devNull, 0)
        close(devNull)
        dup2(2, 1)
        do {
            try await serve(handler: handler, input: input, output: output)
            return 0
        } catch {
            StandardError.writeLine("aiotask: handler link failed: \(error)")
            return 70
        }
    }

    /// Answers tasks one at a time until the daemon closes the link.
    private static func serve(handler: @escaping TaskContextHandler, input: CInt, output: CInt) async throws {
        // The arena is mapped from the claims' descriptor, which taking the claims closes.
        let sharedPayloads = SharedPayloadArena.inherited()
        var link = HandlerLink(
            input: input,
            output: output,
            maximumLength: Int(UInt32.max),
            claims: TaskClaims.inherited(),
            sharedPayloads: sharedPayloads,
            hasTaskContext: TaskContextHeader.isInherited()
        )
        while let task = try link.nextTask() {
            // Swift's concurrency threads block most signals, and a process the handler starts without resetting
            // its mask (a plain posix_spawn) would inherit that: it could not be stopped with SIGTERM. The thread
            // that starts the handler unblocks them (no signal source needs them blocked in a pool process).
            aiotask_unblock_signals()
            let reply: HandlerReply
            do {
                reply = .result(try await handler(task, TaskContext(header: link.currentContext)))
            } catch {
                reply = .error(String(describing: error))
            }
            // A blocking write: the reply is in the pipe before the next task starts, so should that task kill
            // the process, the daemon has this answer and fails only the task that was running.
            try link.send(reply)
        }
    }
}

/// The former name of ``PoolProcessRole``; kept so that code written against it still compiles.
@available(*, deprecated, renamed: "PoolProcessRole")
public typealias WorkerRole = PoolProcessRole
