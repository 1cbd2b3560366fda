import NIOCore

/// Where tasks can be submitted: an ``AiotaskClient`` connection, or a ``ReconnectingClient``.
///
/// Code that only submits tasks can take either through this protocol.
public protocol TaskSubmitter: Sendable {
    /// Runs a task and returns its result; nil `timeout` for the server's default.
    func submit(_ payload: ByteBuffer, timeout: Duration?) async throws -> ByteBuffer
}

extension TaskSubmitter {
    /// Runs a task given as bytes and returns the result bytes; see ``submit(_:timeout:)-(ByteBuffer,_)``.
    public func submit(_ payload: [UInt8], timeout: Duration? = nil) async throws -> [UInt8] {
        let result = try await submit(ByteBuffer(bytes: payload), timeout: timeout)
        return Array(result.readableBytesView)
    }

    /// Runs a task given as UTF-8 text and returns the result bytes; see ``submit(_:timeout:)-(ByteBuffer,_)``.
    public func submit(_ text: String, timeout: Duration? = nil) async throws -> [UInt8] {
        let result = try await submit(ByteBuffer(string: text), timeout: timeout)
        return Array(result.readableBytesView)
    }
}
