/// The state of a task as reported in an `UPDATE` frame.
///
/// The raw values are those of the original protocol; ``failed`` is an extension sent only to clients that
/// said `HELLO`. Unknown values survive decoding so that a newer server never breaks an older client.
public struct TaskStatus: RawRepresentable, Hashable, Sendable {
    public let rawValue: UInt8

    public init(rawValue: UInt8) {
        self.rawValue = rawValue
    }

    /// Waiting in the queue for a free pool process.
    public static let inQueue = TaskStatus(rawValue: 0)
    /// Running in a pool process.
    public static let processing = TaskStatus(rawValue: 1)
    /// Finished with a result, which has been sent.
    public static let done = TaskStatus(rawValue: 2)
    /// Finished with a failure, which has been sent (extension).
    public static let failed = TaskStatus(rawValue: 3)
    /// The client has not submitted the task yet (a client-side state of the original protocol).
    public static let notSubmitted = TaskStatus(rawValue: 254)
    /// The server knows no such task on this connection.
    public static let notFound = TaskStatus(rawValue: 255)
}

extension TaskStatus: CustomStringConvertible {
    public var description: String {
        switch self {
        case .inQueue: "in queue"
        case .processing: "processing"
        case .done: "done"
        case .failed: "failed"
        case .notSubmitted: "not submitted"
        case .notFound: "not found"
        default: "unknown status \(rawValue)"
        }
    }
}
