import NIOCore

/// One message of the aiotask wire protocol. See docs/protocol.md for the byte layout of each.
public enum Frame: Hashable, Sendable {
    /// Submit a task (original protocol). Answered with `done` on success.
    case enqueue(TaskID, payload: ByteBuffer)
    /// The status of a task, in answer to `status`.
    case update(TaskID, TaskStatus)
    /// The result of a task submitted with `enqueue` on a connection that did not say `hello`.
    case done(TaskID, result: ByteBuffer)
    /// Ask for the status of a task.
    case status(TaskID)

    /// Negotiate the extensions; both ends send one, the client first.
    case hello(Hello)
    /// Submit a task with an optional timeout (nil: the server's default).
    case submit(TaskID, timeout: Duration?, payload: ByteBuffer)
    /// The result of a task, on a connection that said `hello`.
    case result(TaskID, ByteBuffer)
    /// The task ended without a result.
    case failed(TaskID, FailureReason, message: String)
    /// Cancel a queued or running task; it is then answered with `failed(…, .cancelled, …)`.
    case cancel(TaskID)
    /// Ask for the server's statistics.
    case infoRequest
    /// The server's statistics, a UTF-8 JSON object.
    case info(ByteBuffer)
    /// A connection-level error; the sender closes the connection after it.
    case error(String)
    /// The server is stopping: it takes no more tasks on this connection, answers those it took, then closes it.
    case goodbye(String)
    /// An operator puts the server into drain for HAProxy's agent check (true) or takes it out (false); the
    /// server answers with `info`. Tasks are still taken: only the balancer's new connections stop.
    case drain(Bool)
    /// Ask for the pool's state, process by process (protocol version 2).
    case poolRequest
    /// The pool's state, a UTF-8 JSON object (``PoolStatus``), in answer to `poolRequest`.
    case pool(ByteBuffer)
    /// The trace context of the task whose `submit` or `enqueue` comes right after, with this id (protocol version
    /// 3): a `traceparent` and a `tracestate` (empty for none), as the text the client sent. The receiver validates
    /// the `traceparent` (``TraceParent/init(parsing:)``); the frame's layout is all the decoder checks.
    case traceContext(TaskID, traceParent: String, traceState: String)

    /// The type byte of this frame.
    public var type: FrameType {
        switch self {
        case .enqueue: .enqueue
        case .update: .update
        case .done: .done
        case .status: .status
        case .hello: .hello
        case .submit: .submit
        case .result: .result
        case .failed: .failed
        case .cancel: .cancel
        case .infoRequest: .infoRequest
        case .info: .info
        case .error: .error
        case .goodbye: .goodbye
        case .drain: .drain
        case .poolRequest: .poolRequest
        case .pool: .pool
        case .traceContext: .traceContext
        }
    }
}

/// The content of a `HELLO` frame.
public struct Hello: Hashable, Sendable {
    /// The protocol version this implementation speaks: 2 adds `POOL_REQUEST` and `POOL`, 3 `TRACE_CONTEXT`. A
    /// server answers a client's `HELLO` with the lower of the client's version and its own, so a client of an older
    /// version sees what it always saw.
    public static let currentVersion: UInt8 = 3

    /// The first version with `POOL_REQUEST` and `POOL`.
    public static let poolStatusVersion: UInt8 = 2

    /// The first version with `TRACE_CONTEXT`: a client sends it only when the server answered 3 or later, and a
    /// server refuses it (a protocol violation) on a connection that negotiated less.
    public static let traceContextVersion: UInt8 = 3

    /// The sender's protocol version.
    public var version: UInt8
    /// The largest task (from a server) or result (from a client) the sender accepts, in bytes.
    public var maximumPayloadLength: UInt32

    public init(version: UInt8 = Hello.currentVersion, maximumPayloadLength: UInt32) {
        self.version = version
        self.maximumPayloadLength = maximumPayloadLength
    }
}
