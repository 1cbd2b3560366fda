import NIOCore

/// What the ``FrameDecoder`` yields: a frame, or the id of a task whose bytes were too large to accept.
public enum InboundFrame: Hashable, Sendable {
    /// A complete, well-formed frame.
    case frame(Frame)
    /// A task-carrying frame longer than the limit. Its bytes are skipped without being buffered, so the
    /// connection carries on; the receiver answers the task with a `payloadTooLarge` failure.
    case oversized(FrameType, TaskID, length: Int)
}

/// Splits a byte stream into frames, never allocating from a length it has not checked.
///
/// Task-carrying frames (`ENQUEUE`, `SUBMIT`, `DONE`, `RESULT`) are limited by ``maximumPayloadLength``, all
/// others by ``maximumControlFrameLength``. An oversized task-carrying frame is reported as
/// ``InboundFrame/oversized(_:_:length:)`` and skipped; any other violation throws a ``ProtocolError``.
public struct FrameDecoder: LengthPrefixedDecoder {
    public typealias InboundOut = InboundFrame

    /// Largest accepted task or result, in bytes (excluding the task id and other fields).
    public var maximumPayloadLength: Int
    /// Largest accepted payload of any other frame.
    public var maximumControlFrameLength: Int

    /// Asked, for each task-carrying frame that has not arrived whole, whether its bytes may be held while the
    /// rest arrives (a server counts them against its memory budget); a frame refused is skipped as an oversized
    /// one is, and reported as ``InboundFrame/oversized(_:_:length:)``. nil holds every frame within the limit.
    ///
    /// The argument is the frame's payload length; the answer is asked once per frame that is held.
    public var admitPartialTask: ((Int) -> Bool)?

    /// Bytes of an oversized frame still to be discarded.
    private var bytesToSkip = 0
    /// Whether ``admitPartialTask`` admitted the frame at the front.
    private var frontIsAdmitted = false

    /// The limit of a control frame's payload that both ends of the protocol keep: 64 KiB.
    public static let defaultMaximumControlFrameLength = 64 * 1024

    public init(maximumPayloadLength: Int, maximumControlFrameLength: Int = defaultMaximumControlFrameLength) {
        self.maximumPayloadLength = maximumPayloadLength
        self.maximumControlFrameLength = maximumControlFrameLength
    }

    public mutating func decode(buffer: inout ByteBuffer) throws -> InboundFrame? {
        if bytesToSkip > 0 {
            let skipped = min(bytesToSkip, buffer.readableBytes)
            buffer.moveReaderIndex(forwardBy: skipped)
            bytesToSkip -= skipped
            if bytesToSkip > 0 { return nil }
        }
        guard let rawType = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return nil }
        let type = FrameType(rawValue: rawType)
        guard type.isKnown else { throw ProtocolError.unknownFrameType(rawType) }

        let length: Int
        if type.isExtension {
            guard let value = buffer.getInteger(at: buffer.readerIndex + 1, as: UInt32.self) else { return nil }
            length = Int(value)
        } else {
            guard let value = buffer.getInteger(at: buffer.readerIndex + 1, as: UInt16.self) else { return nil }
            length = Int(value)
        }

        let headerLength = type.headerLength
        if length > limit(for: type) {
            guard type.carriesTaskData else {
                throw ProtocolError.frameTooLarge(type, length: length, limit: limit(for: type))
            }
            return try decodeOversized(type, length: length, headerLength: headerLength, buffer: &buffer)
        }
        guard buffer.readableBytes >= headerLength + length else {
            if type.carriesTaskData, !frontIsAdmitted, let admitPartialTask {
                guard admitPartialTask(length) else {
                    return try decodeOversized(type, length: length, headerLength: headerLength, buffer: &buffer)
                }
                frontIsAdmitted = true
            }
            return nil
        }
        frontIsAdmitted = false
        buffer.moveReaderIndex(forwardBy: headerLength)
        var payload = buffer.readSlice(length: length)!
        return .frame(try Self.parse(type, payload: &payload))
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> InboundFrame? {
        if let frame = try decode(buffer: &buffer) {
            // An oversized frame whose remaining bytes will never come is a truncated stream, not a task.
            if case .oversized = frame, bytesToSkip > 0 {
                let left = bytesToSkip
                bytesToSkip = 0
                throw ProtocolError.truncatedStream(bytesLeft: left)
            }
            return frame
        }
        if buffer.readableBytes > 0 || bytesToSkip > 0 {
            let left = buffer.readableBytes + bytesToSkip
            buffer.moveReaderIndex(to: buffer.writerIndex)
            bytesToSkip = 0
            throw ProtocolError.truncatedStream(bytesLeft: left)
        }
        return nil
    }

    public func frameLength(at buffer: ByteBuffer) -> Int? {
        guard bytesToSkip == 0, let rawType = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else {
            return nil
        }
        let type = FrameType(rawValue: rawType)
        guard type.isKnown else { return nil }
        let length: Int
        if type.isExtension {
            guard let value = buffer.getInteger(at: buffer.readerIndex + 1, as: UInt32.self) else { return nil }
            length = Int(value)
        } else {
            guard let value = buffer.getInteger(at: buffer.readerIndex + 1, as: UInt16.self) else { return nil }
            length = Int(value)
        }
        guard length <= limit(for: type) else { return nil }
        // A frame not admitted yet may be refused: no memory is reserved for it before.
        if type.carriesTaskData, admitPartialTask != nil, !frontIsAdmitted { return nil }
        return type.headerLength + length
    }

    private func limit(for type: FrameType) -> Int {
        guard type.carriesTaskData else { return maximumControlFrameLength }
        // The fields in front of the task bytes don't count against the payload limit. Saturate, so that
        // `Int.max` can mean "no limit".
        let (limit, overflow) = maximumPayloadLength.addingReportingOverflow(
            TaskID.byteCount + (type == .submit ? 4 : 0)
        )
        return overflow ? .max : limit
    }

    /// Reads the id of an oversized task, then arranges for the rest of its bytes to be skipped.
    private mutating func decodeOversized(
        _ type: FrameType,
        length: Int,
        headerLength: Int,
        buffer: inout ByteBuffer
    ) throws -> InboundFrame? {
        guard buffer.readableBytes >= headerLength + TaskID.byteCount else { return nil }
        buffer.moveReaderIndex(forwardBy: headerLength)
        let id = buffer.readTaskID()!
        bytesToSkip = length - TaskID.byteCount
        let skipped = min(bytesToSkip, buffer.readableBytes)
        buffer.moveReaderIndex(forwardBy: skipped)
        bytesToSkip -= skipped
        let dataLength = length - TaskID.byteCount - (type == .submit ? 4 : 0)
        return .oversized(type, id, length: dataLength)
    }

    /// Interprets the complete payload of a frame of a known type.
    static func parse(_ type: FrameType, payload: inout ByteBuffer) throws -> Frame {
        func malformed(_ reason: String) -> ProtocolError {
            .malformedFrame(type, reason: reason)
        }
        func requireID() throws -> TaskID {
            guard let id = payload.readTaskID() else {
                throw malformed("\(payload.readableBytes) bytes is too short for a 16-byte task id")
            }
            return id
        }
        func requireEnd() throws {
            guard payload.readableBytes == 0 else {
                throw malformed("\(payload.readableBytes) unexpected trailing bytes")
            }
        }

        switch type {
        case .enqueue:
            return .enqueue(try requireID(), payload: payload)
        case .update:
            let id = try requireID()
            guard let status = payload.readInteger(as: UInt8.self) else { throw malformed("missing status byte") }
            try requireEnd()
            return .update(id, TaskStatus(rawValue: status))
        case .done:
            return .done(try requireID(), result: payload)
        case .status:
            let id = try requireID()
            try requireEnd()
            return .status(id)
        case .hello:
            guard let (version, maximum) = payload.readMultipleIntegers(as: (UInt8, UInt32).self) else {
                throw malformed("needs a version byte and a 32-bit payload limit")
            }
            // Later versions may append fields; they are ignored here.
            return .hello(Hello(version: version, maximumPayloadLength: maximum))
        case .submit:
            let id = try requireID()
            guard let milliseconds = payload.readInteger(as: UInt32.self) else {
                throw malformed("missing the 32-bit timeout")
            }
            return .submit(id, timeout: TimeoutEncoding.duration(milliseconds: milliseconds), payload: payload)
        case .result:
            return .result(try requireID(), payload)
        case .failed:
            let id = try requireID()
            guard let reason = payload.readInteger(as: UInt8.self) else { throw malformed("missing reason code") }
            let message = payload.readString(length: payload.readableBytes) ?? ""
            return .failed(id, FailureReason(rawValue: reason), message: message)
        case .cancel:
            let id = try requireID()
            try requireEnd()
            return .cancel(id)
        case .infoRequest:
            try requireEnd()
            return .infoRequest
        case .info:
            return .info(payload)
        case .poolRequest:
            try requireEnd()
            return .poolRequest
        case .pool:
            return .pool(payload)
        case .error:
            return .error(payload.readString(length: payload.readableBytes) ?? "")
        case .goodbye:
            return .goodbye(payload.readString(length: payload.readableBytes) ?? "")
        case .drain:
            guard let value = payload.readInteger(as: UInt8.self) else { throw malformed("missing the drain byte") }
            try requireEnd()
            guard value <= 1 else { throw malformed("drain byte \(value) is neither 0 nor 1") }
            return .drain(value == 1)
        case .traceContext:
            let id = try requireID()
            guard let parentLength = payload.readInteger(as: UInt8.self) else {
                throw malformed("missing the traceparent's length byte")
            }
            guard let traceParent = payload.readString(length: Int(parentLength)) else {
                throw malformed(
                    "the traceparent's length is \(parentLength) bytes, but \(payload.readableBytes) follow"
                )
            }
            return .traceContext(
                id,
                traceParent: traceParent,
                traceState: payload.readString(length: payload.readableBytes) ?? ""
            )
        default:
            throw ProtocolError.unknownFrameType(type.rawValue)
        }
    }
}
