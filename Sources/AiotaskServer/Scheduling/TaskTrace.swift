import AiotaskProtocol
import Logging

/// The W3C trace context a client attached to a task (`TRACE_CONTEXT`, protocol version 3).
///
/// A class, so that a task without one pays a nil reference in its ``TaskRecord`` and nothing else: the context
/// is allocated only for a task that has one.
final class TaskTrace: Sendable {
    /// The `traceparent`: the trace id, and the client's span that submitted the task.
    ///
    /// The `tracestate` that came with it is not kept: nothing reads it yet, and a task waiting in the queue must not
    /// hold up to 64 KiB of it outside the queue's byte budget.
    let parent: TraceParent

    init(parent: TraceParent) {
        self.parent = parent
    }

    /// Adds `trace_id` and `span_id` (journal fields `TRACE_ID`, `SPAN_ID`) to a task's log metadata.
    func annotate(_ metadata: inout Logger.Metadata) {
        metadata["trace_id"] = "\(parent.traceID)"
        metadata["span_id"] = "\(parent.spanID)"
    }
}
