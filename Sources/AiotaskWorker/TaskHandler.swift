import NIOCore

/// A user-defined task function: the task's bytes in, the result's bytes out.
///
/// It runs in a pool process, one task at a time. A thrown error fails the task with the reason
/// `handlerError` and the error's description as message. A handler that needs the task's id, its deadline or a
/// logger is a ``TaskContextHandler``.
public typealias TaskHandler = @Sendable (ByteBuffer) async throws -> ByteBuffer

/// A user-defined task function that also receives the task's ``TaskContext``: its id, its deadline and a logger.
///
/// It runs like a ``TaskHandler``: in a pool process, one task at a time; a thrown error fails the task.
public typealias TaskContextHandler = @Sendable (ByteBuffer, TaskContext) async throws -> ByteBuffer
