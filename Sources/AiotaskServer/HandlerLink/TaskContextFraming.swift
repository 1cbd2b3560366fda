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
/// On the link (docs/handler-protocol.md §1, Swift handlers only): `id: 16 bytes | word: UInt64 BE`, whose top bit
/// says that a trace context follows and whose other 63 bits are the timeout in nanoseconds, 0 for none; with the
/// top bit, `trace id: 16 bytes | parent id: 8 bytes | flags: 1 byte` follows; then the request as it would be
/// without it. A task without a trace context costs no byte more than before the trace context existed. The daemon
/// sends it to every process that runs a library handler, and says so with ``environmentKey``; an external handler
/// program never gets it.
package struct TaskContextHeader: Hashable, Sendable {
    /// The task's id, as its client chose it.
    package var id: TaskID
    /// The task's timeout (the client's, or the server's default), counted from when it starts; nil for none.
    package var timeout: Duration?
    /// The W3C trace context its client attached, or nil.
    package var traceParent: TraceParent?

    /// Bytes the header takes on the link without a trace context.
    static let length = TaskID.byteCount + 8
    /// Bytes a trace context adds to the header: trace id, parent id, flags.
    static let traceLength = 16 + 8 + 1
    /// The top bit of the timeout word: a trace context follows.
    static let traceFlag: UInt64 = 1 << 63
    /// The longest timeout the link carries, in nanoseconds (about 292 years): the timeout word less its flag.
    static let longestEncodedTimeout: UInt64 = traceFlag - 1

    /// Bytes this header takes on the link.
    var encodedLength: Int { traceParent == nil ? Self.length : Self.length + Self.traceLength }

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

    /// The timeout in nanoseconds as the link carries it: 0 for none, at least 1 for any timeout, and
    /// ``longestEncodedTimeout`` for one longer than it holds (about 292 years).
    var encodedTimeout: UInt64 {
        guard let timeout else { return 0 }
        let (seconds, attoseconds) = timeout.components
        guard seconds >= 0 else { return 1 }
        let (whole, overflow) = UInt64(seconds).multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return Self.longestEncodedTimeout }
        let (total, carry) = whole.addingReportingOverflow(UInt64(attoseconds / 1_000_000_000))
        if carry { return Self.longestEncodedTimeout }
        return min(max(total, 1), Self.longestEncodedTimeout)
    }

    /// The header whose timeout the link carries as `nanoseconds` (the flag bit cleared).
    init(id: TaskID, encodedTimeout nanoseconds: UInt64, traceParent: TraceParent? = nil) {
        self.id = id
        self.timeout = nanoseconds == 0 ? nil : .nanoseconds(nanoseconds)
        self.traceParent = traceParent
    }

    package init(id: TaskID, timeout: Duration?, traceParent: TraceParent? = nil) {
        self.id = id
        self.timeout = timeout
        self.traceParent = traceParent
    }
}

extension ByteBuffer {
    /// Appends the header of a task for a Swift handler's pool process; the request follows.
    mutating func writeTaskContextHeader(_ header: TaskContextHeader) {
        guard let trace = header.traceParent else {
            writeMultipleIntegers(header.id.high, header.id.low, header.encodedTimeout)
            return
        }
        writeMultipleIntegers(
            header.id.high,
            header.id.low,
            header.encodedTimeout | TaskContextHeader.traceFlag,
            trace.traceIDHigh,
            trace.traceIDLow,
            trace.parentID,
            trace.flags
        )
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
        guard let word = buffer.getInteger(at: buffer.readerIndex + TaskID.byteCount, as: UInt64.self) else {
            return nil
        }
        let headerLength = Self.headerLength(word)
        guard buffer.readableBytes >= headerLength else { return nil }
        var rest = buffer
        rest.moveReaderIndex(forwardBy: headerLength)
        return requests.frameLength(at: rest).map { $0 + headerLength }
    }

    /// The length of a header whose timeout word is `word`.
    private static func headerLength(_ word: UInt64) -> Int {
        word & TaskContextHeader.traceFlag == 0
            ? TaskContextHeader.length : TaskContextHeader.length + TaskContextHeader.traceLength
    }

    mutating func decode(buffer: inout ByteBuffer) throws -> Decoded? {
        guard hasContext else { return try requests.decode(buffer: &buffer).map { (nil, $0) } }
        guard
            let (high, low, word) = buffer.getMultipleIntegers(
                at: buffer.readerIndex,
                as: (UInt64, UInt64, UInt64).self
            )
        else { return nil }
        var traceParent: TraceParent?
        if word & TaskContextHeader.traceFlag != 0 {
            guard
                let (traceHigh, traceLow, parent, flags) = buffer.getMultipleIntegers(
                    at: buffer.readerIndex + TaskContextHeader.length,
                    as: (UInt64, UInt64, UInt64, UInt8).self
                )
            else { return nil }
            // The daemon sends only contexts it validated; an all-zero id (no trace in W3C terms) is dropped rather
            // than trusted.
            if traceHigh | traceLow != 0, parent != 0 {
                traceParent = TraceParent(traceIDHigh: traceHigh, traceIDLow: traceLow, parentID: parent, flags: flags)
            }
        }
        // The request is decoded past the header; the header is given back until the request is whole. The buffer
        // is not copied: a copy would cost a reference count on its storage for each task.
        let start = buffer.readerIndex
        buffer.moveReaderIndex(forwardBy: Self.headerLength(word))
        guard let request = try requests.decode(buffer: &buffer) else {
            buffer.moveReaderIndex(to: start)
            return nil
        }
        let header = TaskContextHeader(
            id: TaskID(high: high, low: low),
            encodedTimeout: word & ~TaskContextHeader.traceFlag,
            traceParent: traceParent
        )
        return (header, request)
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
