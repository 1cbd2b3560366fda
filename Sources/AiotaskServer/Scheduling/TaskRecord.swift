import AiotaskProtocol
import NIOCore

/// How a task ended.
enum TaskOutcome {
    case success(ByteBuffer)
    case failure(FailureReason, String)
}

/// One accepted task, from its arrival to its answer. Lives on the server's event loop.
///
/// Its place on the way (``TaskState``) is the ``Scheduler``'s to set, but for `running`, which its pool slot sets.
final class TaskRecord: SchedulableTask {
    typealias State = TaskState

    let id: TaskID
    /// The connection that submitted it; it receives the outcome.
    let connection: ConnectionHandler
    /// The task bytes; released once handed to a process.
    var payload: ByteBuffer
    /// The task's length in bytes, as it arrived (``payload`` is emptied once a process has it).
    let size: Int
    /// The client's timeout, or nil for the server's default.
    let timeout: Duration?
    let acceptedAt: NIODeadline
    /// When it started on a pool process; nil until then (``Supervisor/taskStarts(_:at:)``).
    var startedAt: NIODeadline?
    var state: State = .queued
    /// The payload limit in force when the task was queued, while it is in flight (see
    /// ``Supervisor/maximumReplyLength``); the ``Scheduler`` keeps it.
    var payloadLimit: Int?
    /// The trace context its client attached (`TRACE_CONTEXT`), or nil: a nil reference for the tasks without one.
    let trace: TaskTrace?

    init(id: TaskID, connection: ConnectionHandler, payload: ByteBuffer, timeout: Duration?, trace: TaskTrace? = nil) {
        self.id = id
        self.connection = connection
        self.payload = payload
        self.size = payload.readableBytes
        self.timeout = timeout
        self.trace = trace
        self.acceptedAt = .now()
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
