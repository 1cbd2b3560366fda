import AiotaskProtocol
import Logging

/// What a handler knows about the task it runs, beside the task's bytes: its id, its deadline, and a logger.
///
/// A ``TaskContextHandler`` receives one with each task:
///
/// ```swift
/// await Daemon.main { task, context in
///     context.logger.info("resizing \(task.readableBytes) bytes")
///     if let deadline = context.deadline, deadline - .now < .seconds(1) { throw TooLate() }
///     return try resize(task)
/// }
/// ```
public struct TaskContext: Sendable {
    /// The task's id, as the client that submitted it chose it (`TaskHandle.id` in `AiotaskClient`); unique among
    /// the tasks in flight on the client's connection, not across connections.
    public let id: TaskID

    /// When the pool stops the task as timed out: the moment the handler started it plus the task's timeout (the
    /// client's, or the daemon's `task-timeout`); nil when the task has none.
    ///
    /// The daemon's own timer starts when it hands the task over or, for a task sent ahead, when it reads the answer
    /// to the task before: the two agree within the time a pipe takes to carry a few bytes. At the deadline the
    /// process group gets SIGTERM, and SIGKILL after the daemon's `kill-grace`.
    public let deadline: ContinuousClock.Instant?

    /// A logger whose lines reach the daemon's log (the journal under systemd) through the pool process's stderr,
    /// with the task's id as the metadata `task_id`; the daemon adds the pool process's pid (`worker_pid`).
    ///
    /// It logs at `info` and above unless its `logLevel` is changed. It is made on first use, so a handler that does
    /// not log pays nothing for it.
    public var logger: Logger {
        get { customLogger ?? Self.logger(for: id) }
        set { customLogger = newValue }
    }

    private var customLogger: Logger?

    /// A context for the task `id`, which must finish by `deadline`.
    public init(id: TaskID, deadline: ContinuousClock.Instant?) {
        self.id = id
        self.deadline = deadline
    }

    /// A context for the task `id`, which must finish by `deadline`, logging with `logger` (for handler tests).
    public init(id: TaskID, deadline: ContinuousClock.Instant?, logger: Logger) {
        self.init(id: id, deadline: deadline)
        self.customLogger = logger
    }

    /// The context of a task as the link to the daemon announced it, started now.
    init(header: TaskContextHeader?, startedAt now: ContinuousClock.Instant? = nil) {
        // A process given no context (started by hand rather than by a pool) still gets one: the nil UUID, no
        // deadline.
        let header = header ?? TaskContextHeader(id: TaskID(high: 0, low: 0), timeout: nil)
        // The clock is read only for a task that has a timeout.
        self.init(id: header.id, deadline: header.timeout.map { (now ?? .now) + $0 })
    }

    /// Every task's logger is this one, with the task's id added.
    private static let processLogger = Logger(label: "aiotask.handler") { label in
        PoolProcessLogHandler(label: label)
    }

    private static func logger(for id: TaskID) -> Logger {
        var logger = processLogger
        logger[metadataKey: "task_id"] = "\(id)"
        return logger
    }
}
