import CAiotaskShims
import NIOConcurrencyHelpers

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A program started as a child of this process: the one way the daemon starts its pool processes and the tests
/// start theirs (`aiotaskd`, the CLI, helper programs).
///
/// The child runs in a process group of its own (its pid is the group id), with every signal at its default
/// disposition and none blocked, and with no descriptor but those it is given: listening sockets, pipes of other
/// children and the like never leak into it. Its exit is watched without a thread of its own (see
/// ``watchExit(reaping:_:)``), so a pool of thousands of processes costs no thread per process.
///
/// swift-subprocess is not used: it cannot hand a child a descriptor beyond its standard streams (the task
/// claims' memfd is descriptor 3 of a pool process), and its scoped `run { }` ties a process's life to one async
/// closure where a pool process belongs to an object on an event loop.
package final class ChildProcess: Sendable {
    package let pid: pid_t
    /// Refers to the child until it is reaped, and becomes readable when it exits; -1 if the kernel gave none.
    let processDescriptor: CInt
    let exit = NIOLockedValueBox(ExitState())

    private init(pid: pid_t, processDescriptor: CInt) {
        self.pid = pid
        self.processDescriptor = processDescriptor
    }

    deinit {
        exit.withLockedValue { state in
            // A watch closes the descriptor when it ends (and holds the child until then); without one it is closed here.
            if !state.isWatching, processDescriptor >= 0 { close(processDescriptor) }
        }
    }

    /// Starts `executable` with `arguments` and exactly `environment`.
    ///
    /// - Parameters:
    ///   - descriptors: the child's descriptors, in order: `descriptors[i]` becomes its descriptor `i`. At least
    ///     the three standard streams; every other descriptor is closed in the child. The caller keeps (and
    ///     closes) its own copies.
    ///   - searchingPath: look `executable` up in `PATH` when it holds no `/`.
    ///   - confinement: a Landlock ruleset the child enters before it executes `executable` (see
    ///     ``LandlockRuleset``); the child is not started if it cannot enter it.
    package static func spawn(
        _ executable: String,
        arguments: [String],
        environment: [String: String],
        descriptors: [CInt],
        searchingPath: Bool = false,
        confinement: LandlockRuleset? = nil
    ) throws(SpawnError) -> ChildProcess {
        precondition(descriptors.count >= 3, "a child needs its three standard streams")
        // A descriptor below the count would be overwritten by an earlier dup2 in the child before being copied:
        // such a one is first copied above the count.
        var sources = descriptors
        var copies: [CInt] = []
        defer { for copy in copies { close(copy) } }
        for (index, descriptor) in sources.enumerated() where descriptor < CInt(descriptors.count) {
            let copy = fcntl(descriptor, F_DUPFD_CLOEXEC, CInt(descriptors.count))
            guard copy >= 0 else { throw SpawnError(executable: executable, errno: errno) }
            copies.append(copy)
            sources[index] = copy
        }
        let argv = [executable] + arguments
        let envp = environment.map { "\($0.key)=\($0.value)" }
        let pid = withCStringArray(argv) { argvPointer in
            withCStringArray(envp) { envpPointer in
                aiotask_spawn(
                    executable,
                    argvPointer,
                    envpPointer,
                    sources,
                    CInt(sources.count),
                    searchingPath && !executable.contains("/"),
                    confinement?.descriptor ?? -1
                )
            }
        }
        // The ruleset's descriptor must stay open until the child has entered its domain, which it has by now.
        withExtendedLifetime(confinement) {}
        guard pid > 0 else { throw SpawnError(executable: executable, errno: -pid) }
        // The child is not reaped before this (only its owner reaps it), so the pid cannot name another process.
        let processDescriptor = aiotask_pidfd_open(pid)
        return ChildProcess(pid: pid, processDescriptor: max(processDescriptor, -1))
    }

    /// Sends `signal` to the child; nothing once it has been reaped (its pid may then name another process).
    package func signal(_ signal: CInt) {
        exit.withLockedValue { state in
            guard !state.isReaped else { return }
            _ = kill(pid, signal)
        }
    }

    /// Sends `signal` to every process of the child's group; nothing once the child has been reaped (its group id
    /// may then be another's).
    package func signalGroup(_ signal: CInt) {
        exit.withLockedValue { state in
            guard !state.isReaped else { return }
            _ = kill(-pid, signal)
        }
    }

    /// Creates a close-on-exec pipe of `size` bytes (where the system allows): the parent keeps one end and
    /// hands the other to a child in ``spawn(_:arguments:environment:descriptors:searchingPath:)``.
    package static func makePipe(size: Int) throws(SpawnError) -> (reader: CInt, writer: CInt) {
        var fds: [CInt] = [-1, -1]
        let result = aiotask_pipe(&fds, CInt(size))
        guard result == 0 else { throw SpawnError(executable: "pipe", errno: -result) }
        return (fds[0], fds[1])
    }
}

/// A child process could not be started.
package struct SpawnError: Error, CustomStringConvertible {
    package var executable: String
    package var errno: Int32

    package init(executable: String, errno: Int32) {
        self.executable = executable
        self.errno = errno
    }

    package var description: String { "cannot start \(executable): \(String(cString: strerror(errno)))" }
}

/// Calls `body` with a NULL-terminated `char *const[]` built from `strings`.
private func withCStringArray<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    let pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) } + [nil]
    defer { pointers.forEach { free($0) } }
    return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
}
