import AiotaskProtocol
import NIOCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// What the daemon tells a Swift handler's pool process about each task, ahead of the task on the link, so that
/// the handler's ``TaskContext`` can carry it.
///
/// On the link (docs/handler-protocol.md §2, Swift handlers only): `id: 16 bytes | timeout: UInt64 BE, in
/// nanoseconds, 0 for none`, then the request as it would be without it. The daemon sends it to every process
/// that runs a library handler, and says so with ``environmentKey``; an external handler program never gets it.
package struct TaskContextHeader: Hashable, Sendable {
    /// The task's id, as its client chose it.
    package var id: TaskID
    /// The task's timeout (the client's, or the server's default), counted from when it starts; nil for none.
    package var timeout: Duration?

    /// Bytes the header takes on the link.
    static let length = TaskID.byteCount + 8

    /// The environment variable by which the daemon tells a pool process that each task comes with a header.
    static let environmentKey = "AIOTASK_TASK_CONTEXT"

    /// In a pool process: whether the daemon sends a header with each task. The variable is cleared, so that
    /// programs the handler starts do not take it for theirs.
    package static func isInherited() -> Bool {
        guard let value = getenv(environmentKey) else { return false }
        let isOffered = String(cString: value) == "1"
        unsetenv(environmentKey)
        return isOffered
    }

    /// The timeout in nanoseconds as the link carries it: 0 for none, at least 1 for any timeout, and the largest
    /// value for one longer than it holds (about 584 years).
    var encodedTimeout: UInt64 {
        guard let timeout else { return 0 }
        let (seconds, attoseconds) = timeout.components
        guard seconds >= 0 else { return 1 }
        let (whole, overflow) = UInt64(seconds).multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return .max }
        let (total, carry) = whole.addingReportingOverflow(UInt64(attoseconds / 1_000_000_000))
        if carry { return .max }
        return max(total, 1)
    }

    /// The header whose timeout the link carries as `nanoseconds`.
    init(id: TaskID, encodedTimeout nanoseconds: UInt64) {
        self.id = id
        self.timeout = nanoseconds == 0 ? nil : .nanoseconds(nanoseconds)
    }

    package init(id: TaskID, timeout: Duration?) {
        self.id = id
        self.timeout = timeout
    }
}

extension ByteBuffer {
    /// Appends the header of a task for a Swift handler's pool process; the request follows.
    mutating func writeTaskContextHeader(_ header: TaskContextHeader) {
        writeMultipleIntegers(header.id.high, header.id.low, header.encodedTimeout)
    }
}

/// Decodes tasks on a pool process's side of its link: a ``PoolRequestDecoder``, with a ``TaskContextHeader`` in
/// front of each request when the daemon sends one.
struct ContextualPoolRequestDecoder {
    /// A request and what the daemon said about its task.
    typealias Decoded = (context: TaskContextHeader?, request: PoolRequest)

    private var requests: PoolRequestDecoder
    /// Whether each request comes after a ``TaskContextHeader``.
    let hasContext: Bool

    init(_ requests: PoolRequestDecoder, hasContext: Bool) {
        self.requests = requests
        self.hasContext = hasContext
    }

    /// The length of the whole request at the front of `buffer`, header included, once its request header is there.
    func frameLength(at buffer: ByteBuffer) -> Int? {
        guard hasContext else { return requests.frameLength(at: buffer) }
        guard buffer.readableBytes >= TaskContextHeader.length else { return nil }
        var rest = buffer
        rest.moveReaderIndex(forwardBy: TaskContextHeader.length)
        return requests.frameLength(at: rest).map { $0 + TaskContextHeader.length }
    }

    mutating func decode(buffer: inout ByteBuffer) throws -> Decoded? {
        guard hasContext else { return try requests.decode(buffer: &buffer).map { (nil, $0) } }
        guard
            let (high, low, timeout) = buffer.getMultipleIntegers(
                at: buffer.readerIndex,
                as: (UInt64, UInt64, UInt64).self
            )
        else { return nil }
        // The request is decoded past the header; the header is given back until the request is whole. The buffer
        // is not copied: a copy would cost a reference count on its storage for each task.
        let start = buffer.readerIndex
        buffer.moveReaderIndex(forwardBy: TaskContextHeader.length)
        guard let request = try requests.decode(buffer: &buffer) else {
            buffer.moveReaderIndex(to: start)
            return nil
        }
        return (TaskContextHeader(id: TaskID(high: high, low: low), encodedTimeout: timeout), request)
    }

    mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> Decoded? {
        guard hasContext else { return try requests.decodeLast(buffer: &buffer, seenEOF: seenEOF).map { (nil, $0) } }
        if let decoded = try decode(buffer: &buffer) { return decoded }
        if buffer.readableBytes > 0 {
            let left = buffer.readableBytes
            buffer.moveReaderIndex(to: buffer.writerIndex)
            throw HandlerFramingError.truncated(bytesLeft: left)
        }
        return nil
    }
}
