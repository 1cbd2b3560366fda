import AiotaskProtocol
import NIOCore

/// A task sent with ``AiotaskClient/enqueue(_:timeout:)``: await its result, ask its status, or cancel it.
///
/// Copies share the task; ``result()`` may be awaited any number of times, from any number of Swift tasks.
public struct TaskHandle: Sendable {
    /// The task's id on the wire.
    public let id: TaskID

    private let client: AiotaskClient
    private let future: EventLoopFuture<ByteBuffer>

    init(id: TaskID, client: AiotaskClient, future: EventLoopFuture<ByteBuffer>) {
        self.id = id
        self.client = client
        self.future = future
    }

    /// Waits for the task's result.
    ///
    /// Cancelling the awaiting Swift task cancels the task: the client sends `CANCEL`, and this call (and every
    /// other wait for the same result) throws a ``TaskFailure`` of reason `FailureReason.cancelled` at once.
    ///
    /// - Throws: ``TaskFailure`` when the task ends without a result; ``AiotaskClientError`` when the connection
    ///   fails.
    public func result() async throws -> ByteBuffer {
        try await client.awaitResult(of: id, future)
    }

    /// Asks the server where the task is: `TaskStatus.inQueue`, `TaskStatus.processing`, or, once it has
    /// ended, `TaskStatus.done`, `TaskStatus.failed` or `TaskStatus.notFound`.
    ///
    /// - Throws: ``AiotaskClientError`` when the connection fails.
    public func status() async throws -> TaskStatus {
        try await client.status(of: id)
    }

    /// Asks the server to cancel the task. Unless it finished first, the server then fails it with reason
    /// `FailureReason.cancelled`, which ``result()`` throws. Does nothing once the result has arrived.
    ///
    /// In the legacy protocol, which has no `CANCEL`, the server carries on with the task: ``result()`` throws
    /// ``AiotaskClientError`` with code ``AiotaskClientError/Code/legacyProtocol`` at once, and the result is
    /// ignored when it comes.
    public func cancel() {
        client.cancel(id)
    }
}
