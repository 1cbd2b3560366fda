import AiotaskProtocol
import Logging
import NIOCore

/// How a task ended.
enum TaskOutcome {
    case success(ByteBuffer)
    case failure(FailureReason, String)
}

/// One accepted task, from its arrival to its answer. Lives on the server's event loop.
///
/// Its place on the way (``TaskState``) is the ``Scheduler``'s to set, but for `running`, which its pool slot sets.
///
/// Its stored properties are `@exclusivity(unchecked)`: it lives on one event loop and the state machines it feeds
/// never call back into it, so no two accesses overlap, and the run-time checks Swift would otherwise make on each
/// access of a class's property cost about a tenth of the daemon's CPU per task (docs/performance.md).
final class TaskRecord: SchedulableTask {
    typealias State = TaskState

    let id: TaskID
    /// The connection that submitted it; it receives the outcome.
    let connection: ConnectionHandler
    /// The task bytes; released once handed to a process.
    @exclusivity(unchecked) var payload: ByteBuffer
    /// The task's length in bytes, as it arrived (``payload`` is emptied once a process has it).
    let size: Int
    /// The client's timeout, or nil for the server's default.
    let timeout: Duration?
    let acceptedAt: NIODeadline
    /// When it started on a pool process; nil until then (``Supervisor/taskStarts(_:at:)``).
    @exclusivity(unchecked) var startedAt: NIODeadline?
    @exclusivity(unchecked) var state: State = .queued
    /// The payload limit in force when the task was queued, while it is in flight (see
    /// ``Supervisor/maximumReplyLength``); the ``Scheduler`` keeps it.
    @exclusivity(unchecked) var payloadLimit: Int?
    /// The trace context its client attached (`TRACE_CONTEXT`), or nil: a nil reference for the tasks without one.
    let trace: TaskTrace?

    /// - Parameter acceptedAt: when its frame arrived; the connection reads the clock once per read.
    init(
        id: TaskID,
        connection: ConnectionHandler,
        payload: ByteBuffer,
        timeout: Duration?,
        trace: TaskTrace? = nil,
        acceptedAt: NIODeadline = .now()
    ) {
        self.id = id
        self.connection = connection
        self.payload = payload
        self.size = payload.readableBytes
        self.timeout = timeout
        self.trace = trace
        self.acceptedAt = acceptedAt
    }

    var isFinished: Bool {
        if case .finished = state { return true }
        return false
    }

    /// The status a `STATUS` query reports while the task is in flight.
    var status: TaskStatus {
        switch state {
        case .queued, .prefetched: .inQueue
        case .running: .processing
        case .finished: .done
        }
    }
}

extension TaskRecord {
    /// The journal fields of an entry about this task: `task_id`, the client's fields
    /// (``ConnectionHandler/clientMetadata``: `client`, and over a Unix socket `client_uid`, `client_gid`,
    /// `client_pid`), then `extra`. Built only when such an entry is logged.
    func logMetadata(_ extra: Logger.Metadata = [:]) -> Logger.Metadata {
        var metadata = extra
        metadata["task_id"] = "\(id)"
        trace?.annotate(&metadata)
        metadata.merge(connection.clientMetadata) { old, _ in old }
        return metadata
    }
}
