import NIOCore

/// The framing between the supervisor and a handler process, on the handler's stdin and stdout
/// (docs/handler-protocol.md).
///
/// Request (stdin): `length: UInt32 BE | task bytes`.
/// Reply (stdout): `kind: UInt8 | length: UInt32 BE | bytes`, kind 0 = result, 1 = error message (UTF-8).
public enum HandlerReply: Hashable, Sendable {
    /// The handler's result for the task.
    case result(ByteBuffer)
    /// The handler failed the task; the message says why.
    case error(String)

    static let resultKind: UInt8 = 0
    static let errorKind: UInt8 = 1
}

/// A handler process broke the handler framing (or, on its side, the supervisor did).
///
/// Switch on its ``code``; the other properties say what was wrong, as far as the code has them.
public struct HandlerFramingError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What kind of violation this is.
    public struct Code: Hashable, Sendable {
        private enum Base: Hashable, Sendable {
            case unknownReplyKind, replyTooLarge, requestTooLarge, truncated
        }

        private let base: Base

        private init(_ base: Base) {
            self.base = base
        }

        /// The kind byte is neither 0 (result) nor 1 (error) (``HandlerFramingError/kind``).
        public static let unknownReplyKind = Code(.unknownReplyKind)
        /// The declared length of a reply exceeds the limit.
        public static let replyTooLarge = Code(.replyTooLarge)
        /// The declared length of a request exceeds the limit.
        public static let requestTooLarge = Code(.requestTooLarge)
        /// The stream ended inside a frame (``HandlerFramingError/bytesLeft``).
        public static let truncated = Code(.truncated)
    }

    /// What kind of violation this is.
    public var code: Code
    /// For ``Code/unknownReplyKind``: the kind byte received.
    public var kind: UInt8?
    /// For ``Code/replyTooLarge`` and ``Code/requestTooLarge``: the declared length.
    public var length: Int?
    /// For ``Code/replyTooLarge`` and ``Code/requestTooLarge``: the largest length accepted.
    public var limit: Int?
    /// For ``Code/truncated``: the bytes of the unfinished frame.
    public var bytesLeft: Int?

    /// An error of the given kind; the static functions named after the codes fill in what each one has.
    public init(_ code: Code, kind: UInt8? = nil, length: Int? = nil, limit: Int? = nil, bytesLeft: Int? = nil) {
        self.code = code
        self.kind = kind
        self.length = length
        self.limit = limit
        self.bytesLeft = bytesLeft
    }

    /// The kind byte is neither 0 (result) nor 1 (error).
    public static func unknownReplyKind(_ kind: UInt8) -> HandlerFramingError {
        HandlerFramingError(.unknownReplyKind, kind: kind)
    }

    /// The declared length exceeds the limit.
    public static func replyTooLarge(length: Int, limit: Int) -> HandlerFramingError {
        HandlerFramingError(.replyTooLarge, length: length, limit: limit)
    }

    /// A request longer than the limit.
    public static func requestTooLarge(length: Int, limit: Int) -> HandlerFramingError {
        HandlerFramingError(.requestTooLarge, length: length, limit: limit)
    }

    /// The stream ended inside a frame.
    public static func truncated(bytesLeft: Int) -> HandlerFramingError {
        HandlerFramingError(.truncated, bytesLeft: bytesLeft)
    }

    public var description: String {
        switch code {
        case .unknownReplyKind:
            "reply kind \(kind.map { "\($0)" } ?? "?") is neither 0 (result) nor 1 (error)"
        case .replyTooLarge: "reply of \(length ?? 0) bytes exceeds the limit of \(limit ?? 0) bytes"
        case .requestTooLarge: "request of \(length ?? 0) bytes exceeds the limit of \(limit ?? 0) bytes"
        default: "stream ended inside a frame (\(bytesLeft ?? 0) bytes left over)"
        }
    }
}

extension HandlerFramingError.Code: CustomStringConvertible {
    public var description: String {
        switch base {
        case .unknownReplyKind: "unknown reply kind"
        case .replyTooLarge: "reply too large"
        case .requestTooLarge: "request too large"
        case .truncated: "truncated"
        }
    }
}

extension ByteBuffer {
    /// Appends a task for a handler process.
    public mutating func writeHandlerRequest(_ task: ByteBuffer) {
        writeHandlerRequestHeader(length: task.readableBytes)
        writeImmutableBuffer(task)
    }

    /// Appends the header of a task for a handler process; its `length` bytes follow.
    public mutating func writeHandlerRequestHeader(length: Int) {
        writeInteger(UInt32(length))
    }

    /// Appends a handler's reply.
    public mutating func writeHandlerReply(_ reply: HandlerReply) {
        writeHandlerReplyHeader(reply)
        switch reply {
        case .result(let bytes): writeImmutableBuffer(bytes)
        case .error(let message): writeString(message)
        }
    }

    /// Appends the header of a handler's reply (its kind and length); the reply's bytes follow. A handler process
    /// writes them behind it without copying them.
    public mutating func writeHandlerReplyHeader(_ reply: HandlerReply) {
        switch reply {
        case .result(let bytes): writeMultipleIntegers(HandlerReply.resultKind, UInt32(bytes.readableBytes))
        case .error(let message): writeMultipleIntegers(HandlerReply.errorKind, UInt32(message.utf8.count))
        }
    }
}

/// Decodes replies on the supervisor's side of a handler link.
public struct HandlerReplyDecoder: LengthPrefixedDecoder {
    public typealias InboundOut = HandlerReply

    /// Largest accepted reply, in bytes.
    public var maximumLength: Int

    public init(maximumLength: Int) {
        self.maximumLength = maximumLength
    }

    public mutating func decode(buffer: inout ByteBuffer) throws -> HandlerReply? {
        // Check the kind as soon as it arrives: a handler that prints stray text may then wait for input
        // that will never come, and the violation must not wait for a full header.
        guard let kind = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return nil }
        guard kind == HandlerReply.resultKind || kind == HandlerReply.errorKind else {
            throw HandlerFramingError.unknownReplyKind(kind)
        }
        guard let length32 = buffer.getInteger(at: buffer.readerIndex + 1, as: UInt32.self) else { return nil }
        let length = Int(length32)
        guard length <= maximumLength else {
            throw HandlerFramingError.replyTooLarge(length: length, limit: maximumLength)
        }
        guard buffer.readableBytes >= 5 + length else { return nil }
        buffer.moveReaderIndex(forwardBy: 5)
        var bytes = buffer.readSlice(length: length)!
        if kind == HandlerReply.resultKind { return .result(bytes) }
        return .error(bytes.readString(length: length) ?? "")
    }

    public func frameLength(at buffer: ByteBuffer) -> Int? {
        guard let kind = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self),
            kind == HandlerReply.resultKind || kind == HandlerReply.errorKind,
            let length = buffer.getInteger(at: buffer.readerIndex + 1, as: UInt32.self),
            Int(length) <= maximumLength
        else { return nil }
        return 5 + Int(length)
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> HandlerReply? {
        try decodeLastWhole(buffer: &buffer, truncated: HandlerFramingError.truncated(bytesLeft:))
    }
}

/// Decodes requests on the handler's side of a handler link.
public struct HandlerRequestDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = ByteBuffer

    /// Largest accepted task, in bytes.
    public var maximumLength: Int

    public init(maximumLength: Int) {
        self.maximumLength = maximumLength
    }

    public mutating func decode(buffer: inout ByteBuffer) throws -> ByteBuffer? {
        guard let length32 = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return nil }
        let length = Int(length32)
        guard length <= maximumLength else {
            throw HandlerFramingError.requestTooLarge(length: length, limit: maximumLength)
        }
        guard buffer.readableBytes >= 4 + length else { return nil }
        buffer.moveReaderIndex(forwardBy: 4)
        return buffer.readSlice(length: length)
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> ByteBuffer? {
        try decodeLastWhole(buffer: &buffer, truncated: HandlerFramingError.truncated(bytesLeft:))
    }
}
