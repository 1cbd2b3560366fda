import AiotaskProtocol
import Logging

/// What a handler knows about the task it runs, beside the task's bytes: its id, its deadline, its trace context, and
/// a logger.
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

    /// The W3C trace context the task's client attached (`AiotaskClient` does when a tracer is in use), or nil.
    ///
    /// Its `traceID` is the trace the task belongs to and its `parentID` the client's
    /// span that submitted it: a handler that traces its own work starts its spans as children of it (by extracting
    /// `"\(traceParent)"` as a `traceparent` header with its tracer). The daemon logs the same two ids as `TRACE_ID`
    /// and `SPAN_ID` in the task's journal entries, and ``logger`` adds them as `trace_id` and `span_id`.
    public let traceParent: TraceParent?

    /// A logger whose lines reach the daemon's log (the journal under systemd) through the pool process's stderr,
    /// with the task's id as the metadata `task_id`; the daemon adds the pool process's pid (`worker_pid`).
    ///
    /// It logs at `info` and above unless its `logLevel` is changed. It is made on first use, so a handler that does
    /// not log pays nothing for it.
    public var logger: Logger {
        get { customLogger ?? Self.logger(for: id, traceParent: traceParent) }
        set { customLogger = newValue }
    }

    private var customLogger: Logger?

    /// A context for the task `id`, which must finish by `deadline`, traced as `traceParent` says.
    public init(id: TaskID, deadline: ContinuousClock.Instant?, traceParent: TraceParent? = nil) {
        self.id = id
        self.deadline = deadline
        self.traceParent = traceParent
    }

    /// A context for the task `id`, which must finish by `deadline`, logging with `logger` (for handler tests).
    public init(
        id: TaskID,
        deadline: ContinuousClock.Instant?,
        traceParent: TraceParent? = nil,
        logger: Logger
    ) {
        self.init(id: id, deadline: deadline, traceParent: traceParent)
        self.customLogger = logger
    }

    /// The context of a task as the link to the daemon announced it, started now.
    init(header: TaskContextHeader?, startedAt now: ContinuousClock.Instant? = nil) {
        // A process given no context (started by hand rather than by a pool) still gets one: the nil UUID, no
        // deadline.
        let header = header ?? TaskContextHeader(id: TaskID(high: 0, low: 0), timeout: nil)
        // The clock is read only for a task that has a timeout.
        self.init(id: header.id, deadline: header.timeout.map { (now ?? .now) + $0 }, traceParent: header.traceParent)
    }

    /// Every task's logger is this one, with the task's id added.
    private static let processLogger = Logger(label: "aiotask.handler") { label in
        PoolProcessLogHandler(label: label)
    }

    private static func logger(for id: TaskID, traceParent: TraceParent?) -> Logger {
        var logger = processLogger
        logger[metadataKey: "task_id"] = "\(id)"
        if let traceParent {
            logger[metadataKey: "trace_id"] = "\(traceParent.traceID)"
            logger[metadataKey: "span_id"] = "\(traceParent.spanID)"
        }
        return logger
    }
}
