import AiotaskProtocol
import AiotaskTransport
import NIOCore

/// The framing of the link to a pool process that was offered a ``SharedPayloadArena``: the handler framing
/// (docs/handler-protocol.md), with a kind byte on requests and one more reply kind, so that a payload in the arena
/// travels on the link as its place there.
///
/// This file is the one place of a link's framing, both sides, with or without the arena: the daemon writes
/// tasks with `CoalescingFrameWriter.appendRequest(_:hasKinds:)` and `appendSharedRequest(offset:length:)` and reads
/// replies with ``PoolReplyDecoder``; the pool process (``HandlerLink``) reads tasks with ``PoolRequestDecoder`` and
/// writes replies behind `writeHandlerReplyHeader(_:)`, or as `writeSharedResult(offset:length:)`. The plain
/// framing's encoders and decoders, public for handlers in any language, are in `AiotaskProtocol`
/// (HandlerFraming.swift).
///
/// Request: `kind: UInt8 | length: UInt32 BE`, then the task's bytes (kind 0, inline) or `offset: UInt32 BE` (kind 1,
/// in the arena's payload space).
/// Reply: the handler framing's kinds 0 (result) and 1 (error), and kind 2, a result in the arena: `2 | length:
/// UInt32 BE | offset: UInt32 BE`, where the offset is that of the task's region and the result no longer than it.
enum SharedPayloadFraming {
    static let inlineKind: UInt8 = 0
    static let sharedKind: UInt8 = 1
    static let sharedResultKind: UInt8 = 2
    /// The header of every request, and the whole of a request or reply in the arena.
    static let headerLength = 5
    static let referenceLength = 9
}

extension CoalescingFrameWriter {
    /// Appends a task on the daemon's side of a link to a pool process: its bytes, inline, in the handler framing,
    /// or (`hasKinds`) in ``SharedPayloadFraming``; a large task's bytes are not copied.
    func appendRequest(_ task: ByteBuffer, hasKinds: Bool) {
        let length = task.readableBytes
        if hasKinds {
            append(header: { $0.writeInlineRequestHeader(length: length) }, payload: task)
        } else {
            append(header: { $0.writeHandlerRequestHeader(length: length) }, payload: task)
        }
    }

    /// Appends a task placed in the arena, on a link with ``SharedPayloadFraming``.
    func appendSharedRequest(offset: Int, length: Int) {
        append { $0.writeSharedRequest(offset: offset, length: length) }
    }
}

/// A task as the link to a pool process carries it.
enum PoolRequest: Equatable {
    /// The task's bytes.
    case inline(ByteBuffer)
    /// The task's place in the arena's payload space.
    case shared(offset: Int, length: Int)
}

/// A reply as the link from a pool process carries it.
enum PoolReply: Equatable {
    /// A reply of the handler framing.
    case handler(HandlerReply)
    /// A result in the arena, in the region of the task it answers.
    case sharedResult(offset: Int, length: Int)
}

extension ByteBuffer {
    /// Appends the header of a task sent inline on a link with ``SharedPayloadFraming``; its bytes follow.
    mutating func writeInlineRequestHeader(length: Int) {
        writeMultipleIntegers(SharedPayloadFraming.inlineKind, UInt32(length))
    }

    /// Appends a task placed in the arena, on a link with ``SharedPayloadFraming``.
    mutating func writeSharedRequest(offset: Int, length: Int) {
        writeMultipleIntegers(SharedPayloadFraming.sharedKind, UInt32(length), UInt32(offset))
    }

    /// Appends a result the handler placed in its task's region of the arena, on a link with
    /// ``SharedPayloadFraming``.
    mutating func writeSharedResult(offset: Int, length: Int) {
        writeMultipleIntegers(SharedPayloadFraming.sharedResultKind, UInt32(length), UInt32(offset))
    }
}

/// Decodes tasks on a pool process's side of its link, in the handler framing or in ``SharedPayloadFraming``.
struct PoolRequestDecoder: NIOSingleStepByteToMessageDecoder {
    typealias InboundOut = PoolRequest

    /// Largest accepted task, in bytes.
    let maximumLength: Int
    /// Whether requests carry a kind byte (``SharedPayloadFraming``).
    let hasKinds: Bool

    init(maximumLength: Int, hasKinds: Bool) {
        self.maximumLength = maximumLength
        self.hasKinds = hasKinds
    }

    /// The length of the whole request at the front of `buffer`, once its header is there; nil too for a task over
    /// the limit.
    func frameLength(at buffer: ByteBuffer) -> Int? {
        let header = hasKinds ? SharedPayloadFraming.headerLength : 4
        guard let length = buffer.getInteger(at: buffer.readerIndex + header - 4, as: UInt32.self),
            Int(length) <= maximumLength
        else { return nil }
        if hasKinds, buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) == SharedPayloadFraming.sharedKind {
            return SharedPayloadFraming.referenceLength
        }
        return header + Int(length)
    }

    mutating func decode(buffer: inout ByteBuffer) throws -> PoolRequest? {
        guard hasKinds else {
            var plain = HandlerRequestDecoder(maximumLength: maximumLength)
            return try plain.decode(buffer: &buffer).map(PoolRequest.inline)
        }
        guard let (kind, length32) = buffer.getMultipleIntegers(at: buffer.readerIndex, as: (UInt8, UInt32).self)
        else { return nil }
        let length = Int(length32)
        switch kind {
        case SharedPayloadFraming.inlineKind:
            guard length <= maximumLength else {
                throw HandlerFramingError.requestTooLarge(length: length, limit: maximumLength)
            }
            guard buffer.readableBytes >= SharedPayloadFraming.headerLength + length else { return nil }
            buffer.moveReaderIndex(forwardBy: SharedPayloadFraming.headerLength)
            return .inline(buffer.readSlice(length: length)!)
        case SharedPayloadFraming.sharedKind:
            guard let (_, _, offset) = buffer.readMultipleIntegers(as: (UInt8, UInt32, UInt32).self) else { return nil }
            return .shared(offset: Int(offset), length: length)
        default:
            throw SharedPayloadFramingError.unknownRequestKind(kind)
        }
    }

    mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> PoolRequest? {
        try decodeLastWhole(buffer: &buffer, truncated: HandlerFramingError.truncated(bytesLeft:))
    }
}

/// Decodes replies on the daemon's side of a link, in the handler framing or, for a process offered an arena,
/// in ``SharedPayloadFraming``.
struct PoolReplyDecoder: LengthPrefixedDecoder {
    typealias InboundOut = PoolReply

    private var replies: HandlerReplyDecoder
    /// Whether results in the arena are accepted; from any other process, kind 2 breaks the framing.
    let acceptsSharedResults: Bool

    init(maximumLength: Int, acceptsSharedResults: Bool) {
        self.replies = HandlerReplyDecoder(maximumLength: maximumLength)
        self.acceptsSharedResults = acceptsSharedResults
    }

    private func isSharedResult(at buffer: ByteBuffer) -> Bool {
        acceptsSharedResults
            && buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) == SharedPayloadFraming.sharedResultKind
    }

    func frameLength(at buffer: ByteBuffer) -> Int? {
        isSharedResult(at: buffer) ? SharedPayloadFraming.referenceLength : replies.frameLength(at: buffer)
    }

    mutating func decode(buffer: inout ByteBuffer) throws -> PoolReply? {
        guard isSharedResult(at: buffer) else { return try replies.decode(buffer: &buffer).map(PoolReply.handler) }
        guard let (_, length, offset) = buffer.readMultipleIntegers(as: (UInt8, UInt32, UInt32).self) else {
            return nil
        }
        return .sharedResult(offset: Int(offset), length: Int(length))
    }

    mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> PoolReply? {
        try decodeLastWhole(buffer: &buffer, truncated: HandlerFramingError.truncated(bytesLeft:))
    }
}

/// A link in ``SharedPayloadFraming`` broke it.
enum SharedPayloadFramingError: Error, Hashable, CustomStringConvertible {
    /// A request kind other than 0 (inline) or 1 (in the arena).
    case unknownRequestKind(UInt8)

    var description: String {
        switch self {
        case .unknownRequestKind(let kind): "request kind \(kind) is neither 0 (inline) nor 1 (in shared memory)"
        }
    }
}
