import NIOCore

/// A user-defined task function: the task's bytes in, the result's bytes out.
///
/// It runs in a pool process, one task at a time. A thrown error fails the task with the reason
/// `handlerError` and the error's description as message.
public typealias TaskHandler = @Sendable (ByteBuffer) async throws -> ByteBuffer
