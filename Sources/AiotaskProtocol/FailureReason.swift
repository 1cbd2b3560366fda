/// Why a task ended without a result, as carried by a `FAILED` frame.
///
/// Unknown codes survive decoding, so a client keeps working against a server that added new reasons.
public struct FailureReason: RawRepresentable, Hashable, Sendable {
    public let rawValue: UInt8

    public init(rawValue: UInt8) {
        self.rawValue = rawValue
    }

    /// The handler reported an error; the message is its description.
    public static let handlerError = FailureReason(rawValue: 1)
    /// The pool process running the task died; the message gives the exit status or signal.
    public static let workerCrashed = FailureReason(rawValue: 2)
    /// The task ran longer than its timeout and its process was killed.
    public static let timedOut = FailureReason(rawValue: 3)
    /// The client cancelled the task.
    public static let cancelled = FailureReason(rawValue: 4)
    /// The server refused the task at once, for example because its queue is full.
    public static let rejected = FailureReason(rawValue: 5)
    /// The task or its result is larger than the server or the connection allows.
    public static let payloadTooLarge = FailureReason(rawValue: 6)
    /// The server is stopping and never started the task: it arrived after the server's `GOODBYE`, or was still
    /// queued when the drain deadline came. Resubmitting it (on a new connection) is safe.
    public static let shuttingDown = FailureReason(rawValue: 7)
    /// The server stopped while the task was running: the drain deadline came and its process was killed. The
    /// task may have had some of its effects.
    public static let interrupted = FailureReason(rawValue: 8)

    /// The server gave no reason: a client of the legacy protocol (which has no failure frame) learnt only that
    /// the server no longer knows the task (`UPDATE NOT_FOUND`) while it waited for its result. Never sent by a
    /// server; the reason is in the server's log.
    public static let unknown = FailureReason(rawValue: 0)

    /// Whether the server guarantees it never started the task, so that submitting it again cannot run it twice.
    public var taskWasNotStarted: Bool {
        self == .shuttingDown || self == .rejected
    }
}

extension FailureReason: CustomStringConvertible {
    public var description: String {
        switch self {
        case .handlerError: "handler error"
        case .workerCrashed: "worker crashed"
        case .timedOut: "timed out"
        case .cancelled: "cancelled"
        case .rejected: "rejected"
        case .payloadTooLarge: "payload too large"
        case .shuttingDown: "shutting down"
        case .interrupted: "interrupted"
        case .unknown: "reason unknown"
        default: "failure \(rawValue)"
        }
    }
}
