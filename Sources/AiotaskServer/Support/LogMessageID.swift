import AiotaskProtocol

/// Journal `MESSAGE_ID`s of the task lifecycle entries, so `journalctl MESSAGE_ID=…` finds every one of a kind.
public enum LogMessageID {
    /// A task failed: handler error, rejected, cancelled, payload too large, shutting down.
    public static let taskFailed = "95b6fb5ed04e41f8ab19107df004c1f5"
    /// A task exceeded its timeout and its process group was killed.
    public static let taskTimedOut = "7e57fdaedaaa47e1b62ffb60b6ce3593"
    /// A pool process died while it ran a task.
    public static let workerCrashed = "252003be70ec440dbb6da5207eaeba66"
    /// A pool process exceeded the memory limit: killed while it ran a task, or replaced after one.
    public static let memoryLimitExceeded = "d3c6b1f0a25e4c7e9b8f41e2a7c05d93"
    /// A task has run longer than ``ServerConfiguration/slowTaskThreshold`` and still runs: one entry per task.
    public static let slowTask = "db8b3c809def47a0a6d1cf74230e0c49"
    /// A Unix socket connection was refused: `allow-users` and `allow-groups` do not let its user in.
    public static let peerRefused = "80ab0247fdc449d2937398a4a8e61ef9"
    /// A `tls://` connection was refused in or right after its handshake: no or a rejected client certificate, not
    /// on `tls-allowed-clients`, not TLS, or a handshake that did not finish in time.
    public static let tlsRefused = "4f0c6e2a9b8d4d17a3e51c7b2f96d084"

    /// The message id of a task that failed for `reason`.
    static func forFailure(_ reason: FailureReason) -> String {
        switch reason {
        case .timedOut: taskTimedOut
        case .workerCrashed: workerCrashed
        default: taskFailed
        }
    }
}
