import Dispatch
import Foundation
import NIOConcurrencyHelpers

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

extension ChildProcess {
    /// The watch on a child's exit, under ``ChildProcess/exit``.
    ///
    /// `@unchecked`: dispatch's source types are not marked `Sendable` on Linux; the source is only touched under
    /// the lock (and by dispatch itself, which is thread-safe).
    struct ExitState: @unchecked Sendable {
        /// Reads ``ChildProcess/processDescriptor`` until the exit; set while watching.
        var source: (any DispatchSourceRead)?
        /// Set once the watch started: from then on the watch closes ``ChildProcess/processDescriptor``.
        var isWatching = false
        /// Set once the exit was noticed, so that it is handled once.
        var hasFired = false
        /// Set once the child is reaped: from then on its pid and group id may be another's, and it is never
        /// signalled.
        var isReaped = false
        /// The `waitpid` status word, once reaped.
        var status: Int32?
        var waiters: [CheckedContinuation<Int32, Never>] = []
    }

    /// Where every child's exit is noticed and reaped. A serial queue for all children, on which nothing blocks:
    /// dispatch watches the children's pidfds with its one epoll instance, so no thread waits for any one child.
    static let exitQueue = DispatchQueue(label: "aiotask.child-exits")

    /// Watches for the child's exit; call it once.
    ///
    /// Once the child has exited, `reaping` runs on ``exitQueue`` with the child not reaped yet — a zombie keeps
    /// its pid and its group id, so a signal to either cannot reach an unrelated process — and a function that
    /// reaps it and returns its `waitpid` status word, which `reaping` returns. `onExit` is then called with that
    /// status on the same queue, and ``exitStatus()`` returns it.
    ///
    /// - Parameters:
    ///   - reaping: what to do around the reaping; by default just reap. The daemon kills the child's group first
    ///     and reaps under the orphan reaper's lock.
    package func watchExit(
        reaping: @escaping @Sendable (_ reap: () -> Int32) -> Int32 = { $0() },
        _ onExit: @escaping @Sendable (_ waitStatus: Int32) -> Void = { _ in }
    ) {
        let exited: @Sendable () -> Void = { [self] in
            let status = reaping { reap() }
            let waiters = exit.withLockedValue { state in
                state.status = status
                defer { state.waiters = [] }
                return state.waiters
            }
            onExit(status)
            for waiter in waiters { waiter.resume(returning: status) }
        }
        guard processDescriptor >= 0 else {
            // No pidfd (a kernel before 5.3, or no descriptor left): a thread blocks in waitid for this child, the
            // only way left to learn of its exit without reaping it.
            exit.withLockedValue { $0.isWatching = true }
            let pid = self.pid
            Thread.detachNewThread {
                var info = siginfo_t()
                while waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) != 0 && errno == EINTR {}
                Self.exitQueue.async(execute: exited)
            }
            return
        }
        let source = DispatchSource.makeReadSource(fileDescriptor: processDescriptor, queue: Self.exitQueue)
        let descriptor = processDescriptor
        source.setCancelHandler { close(descriptor) }
        source.setEventHandler { [self] in
            // The descriptor stays readable once the child has exited: the first event ends the watch.
            let isFirst = exit.withLockedValue { state in
                guard !state.hasFired else { return false }
                state.hasFired = true
                state.source?.cancel()
                // Drops the cycle between this handler, which holds the child, and the source the child holds.
                state.source = nil
                return true
            }
            if isFirst { exited() }
        }
        exit.withLockedValue { state in
            precondition(!state.isWatching, "the exit of child process \(pid) is already watched")
            state.isWatching = true
            state.source = source
        }
        source.activate()
    }

    /// The child's `waitpid` status word, once it has exited and been reaped; ``watchExit(reaping:_:)`` must have
    /// been called.
    package func exitStatus() async -> Int32 {
        await withCheckedContinuation { continuation in
            let status = exit.withLockedValue { state -> Int32? in
                if let status = state.status { return status }
                state.waiters.append(continuation)
                return nil
            }
            if let status { continuation.resume(returning: status) }
        }
    }

    /// Whether the child has exited and been reaped.
    package var hasExited: Bool { exit.withLockedValue { $0.status != nil } }

    /// Reaps the child, which has exited, and returns its `waitpid` status word.
    private func reap() -> Int32 {
        exit.withLockedValue { state in
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            state.isReaped = true
            return status
        }
    }
}
