import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The process's limit on open file descriptors (`RLIMIT_NOFILE`), which bounds how many clients it can serve.
///
/// Linux starts most processes with a soft limit of 1024 and a much higher hard limit; a server that means to
/// hold thousands of connections raises its soft limit to the hard one, which needs no privilege.
public enum OpenFileLimit {
    /// Descriptors the daemon needs besides its client connections: listening sockets, pipes to its pool
    /// processes, the journal, and some room.
    public static let reserved = 64

    /// The environment variable through which pool processes learn the soft limit to return to.
    static let childSoftLimitKey = "AIOTASK_NOFILE_SOFT"
    /// The soft limit before ``raiseSoftLimitToHard()`` raised it; 0 while it has not.
    private static let softLimitBeforeRaise = Atomic<UInt64>(0)

    /// The soft limit the processes this process starts should run with: the one it had itself before raising it
    /// for its connections, so handlers see the limit they would have anywhere else (programs that `select(2)` or
    /// close every descriptor up to the limit rely on it); nil when it was not raised.
    static var softLimitForChildren: UInt64? {
        let limit = softLimitBeforeRaise.load(ordering: .relaxed)
        return limit == 0 ? nil : limit
    }

    /// In a pool process: lowers the soft limit back to the one the supervisor passed (see
    /// ``softLimitForChildren``), and clears the variable.
    package static func restoreChildSoftLimit() {
        guard let value = getenv(childSoftLimitKey) else { return }
        let wanted = rlim_t(String(cString: value))
        unsetenv(childSoftLimitKey)
        var limit = rlimit()
        guard let wanted, getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, wanted < limit.rlim_cur else { return }
        limit.rlim_cur = wanted
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    }

    /// The current soft and hard limits, or nil if they cannot be read.
    public static var current: (soft: UInt64, hard: UInt64)? {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return nil }
        return (UInt64(limit.rlim_cur), UInt64(limit.rlim_max))
    }

    /// Raises the soft limit as far as the hard limit (or the kernel's `nr_open`, when the hard limit is
    /// unlimited) allows.
    ///
    /// - Returns: the soft limit before and after; both the same when it was as high as it could go already.
    /// - Throws: ``LimitError`` when the limits cannot be read or changed.
    @discardableResult
    public static func raiseSoftLimitToHard() throws(LimitError) -> (before: UInt64, after: UInt64) {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else {
            let error = errno
            throw LimitError(
                reason: "getrlimit(RLIMIT_NOFILE) failed: \(String(cString: strerror(error)))",
                errnoCode: error
            )
        }
        let before = UInt64(limit.rlim_cur)
        guard limit.rlim_cur < limit.rlim_max else { return (before, before) }
        // An unlimited hard limit cannot be the soft limit of RLIMIT_NOFILE: the kernel caps it at nr_open.
        var targets = [limit.rlim_max]
        if limit.rlim_max == rlim_t.max { targets = [1 << 20, 1 << 16] }
        var lastError: Int32 = 0
        for target in targets where target > limit.rlim_cur {
            var raised = limit
            raised.rlim_cur = target
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 {
                softLimitBeforeRaise.store(before, ordering: .relaxed)
                return (before, UInt64(target))
            }
            lastError = errno
        }
        throw LimitError(
            reason: "cannot raise RLIMIT_NOFILE from \(before): \(String(cString: strerror(lastError)))",
            errnoCode: lastError
        )
    }
}

/// A resource limit that could not be read or changed.
public struct LimitError: Error, CustomStringConvertible {
    /// What failed, with the system's error.
    public var reason: String
    /// The `errno` of the failed call.
    public var errnoCode: Int32?

    init(reason: String, errnoCode: Int32? = nil) {
        self.reason = reason
        self.errnoCode = errnoCode
    }

    public var description: String { reason }
}
