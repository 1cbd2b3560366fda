import CAiotaskShims

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Memory a pool process shares with the daemon so that tasks sent ahead to it can be taken back.
///
/// The daemon sends a busy process tasks to run after its current one (prefetch), so that it never waits a
/// round trip for its next task. A process serving a Swift handler *claims* each task, with one atomic
/// compare-and-swap, before starting it; the daemon can *withdraw* every task not claimed yet at any moment
/// and learns exactly which ones were, with no message and no wait. A withdrawn task is skipped by the process
/// (it reads it, and never runs or answers it) and runs on another one. So a task sent ahead never waits behind a
/// long task while another process is idle, and a task cancelled while sent ahead is answered without stopping
/// the process.
///
/// Processes of external handler programs share none of this: they do not claim, and tasks sent ahead to them
/// (only with an explicit `prefetch`) stay committed to them.
package final class TaskClaims {
    private let memory: UnsafeMutableRawPointer

    /// The environment variable naming the descriptor of the memory in a pool process.
    static let descriptorKey = "AIOTASK_CLAIMS_FD"
    /// The descriptor the memory has in a pool process.
    static let childDescriptor: CInt = 3

    private init(memory: UnsafeMutableRawPointer) {
        self.memory = memory
    }

    deinit {
        aiotask_claims_unmap(memory)
    }

    /// New, zeroed memory and its descriptor, to hand to the process being started (the caller closes it).
    static func create() -> (claims: TaskClaims, descriptor: CInt)? {
        let descriptor = aiotask_claims_create()
        guard descriptor >= 0 else { return nil }
        guard let memory = aiotask_claims_map(descriptor) else {
            close(descriptor)
            return nil
        }
        return (TaskClaims(memory: memory), descriptor)
    }

    /// In a pool process: the memory the daemon passed, announced as used, or nil when it passed none. The
    /// variable is cleared, so programs the handler starts do not take it for theirs.
    package static func inherited() -> TaskClaims? {
        guard let value = getenv(descriptorKey) else { return nil }
        unsetenv(descriptorKey)
        guard let descriptor = CInt(String(cString: value)), let memory = aiotask_claims_map(descriptor) else {
            return nil
        }
        close(descriptor)
        aiotask_claims_announce(memory)
        return TaskClaims(memory: memory)
    }

    /// Whether the process announced that it claims its tasks: only then can tasks sent to it be withdrawn.
    var isAnnounced: Bool { aiotask_claims_announced(memory) }

    /// In the pool process: claims the task at `index` of the stream it was sent; false if it was withdrawn, in
    /// which case the process must skip it.
    func claim(_ index: UInt32) -> Bool {
        aiotask_claims_claim(memory, index)
    }

    /// In the daemon: withdraws every task of the `sent` sent so far that the process has not claimed, and
    /// returns the index of the first one withdrawn; nil, withdrawing nothing, while a task before index `from`
    /// (one the daemon awaits the answer to) is not claimed yet.
    func withdraw(from: UInt32, sent: UInt32) -> UInt32? {
        var firstWithdrawn: UInt32 = 0
        guard aiotask_claims_withdraw(memory, from, sent, &firstWithdrawn) else { return nil }
        return firstWithdrawn
    }

    /// Whether stream index `index` comes at or after `other`, with indexes wrapping around.
    static func index(_ index: UInt32, isAtOrAfter other: UInt32) -> Bool {
        Int32(bitPattern: index &- other) >= 0
    }
}
