import NIOCore

extension ByteBuffer {
    /// The largest payload a frame of the original protocol can carry (its length field is 16 bits).
    public static let legacyFrameLimit = Int(UInt16.max)

    /// Appends one frame, header and payload.
    ///
    /// - Throws: ``ProtocolError/payloadExceedsLegacyFrame(_:length:)`` when a frame of the original protocol
    ///   would need more than 65,535 payload bytes, ``ProtocolError/frameTooLarge(_:length:limit:)`` when an
    ///   extension frame would need more than 2³² − 1; nothing is written then.
    public mutating func writeFrame(_ frame: Frame) throws {
        let type = frame.type
        if case .traceContext(_, let traceParent, _) = frame, traceParent.utf8.count > UInt8.max {
            throw ProtocolError.malformedFrame(
                type,
                reason: "a traceparent of \(traceParent.utf8.count) bytes does not fit its 8-bit length"
            )
        }
        let length = frame.payloadLength
        if type.isExtension {
            guard length <= UInt32.max else {
                throw ProtocolError.frameTooLarge(type, length: length, limit: Int(UInt32.max))
            }
            writeInteger(type.rawValue)
            writeInteger(UInt32(length))
        } else {
            guard length <= Self.legacyFrameLimit else {
                throw ProtocolError.payloadExceedsLegacyFrame(type, length: length)
            }
            writeInteger(type.rawValue)
            writeInteger(UInt16(length))
        }
        writePayload(of: frame)
    }

    private mutating func writePayload(of frame: Frame) {
        switch frame {
        case .enqueue(let id, var payload), .done(let id, var payload), .result(let id, var payload):
            writeTaskID(id)
            writeBuffer(&payload)
        case .update(let id, let status):
            writeTaskID(id)
            writeInteger(status.rawValue)
        case .status(let id), .cancel(let id):
            writeTaskID(id)
        case .hello(let hello):
            writeMultipleIntegers(hello.version, hello.maximumPayloadLength)
        case .submit(let id, let timeout, var payload):
            writeTaskID(id)
            writeInteger(TimeoutEncoding.milliseconds(timeout))
            writeBuffer(&payload)
        case .failed(let id, let reason, let message):
            writeTaskID(id)
            writeInteger(reason.rawValue)
            writeString(message)
        case .infoRequest, .poolRequest:
            break
        case .info(var json), .pool(var json):
            writeBuffer(&json)
        case .error(let message), .goodbye(let message):
            writeString(message)
        case .drain(let drained):
            writeInteger(UInt8(drained ? 1 : 0))
        case .traceContext(let id, let traceParent, let traceState):
            writeTaskID(id)
            writeInteger(UInt8(traceParent.utf8.count))
            writeString(traceParent)
            writeString(traceState)
        }
    }
}

extension Frame {
    /// The number of payload bytes (after the header) this frame encodes to.
    public var payloadLength: Int {
        switch self {
        case .enqueue(_, let payload), .done(_, let payload), .result(_, let payload):
            TaskID.byteCount + payload.readableBytes
        case .update: TaskID.byteCount + 1
        case .status, .cancel: TaskID.byteCount
        case .hello: 5
        case .submit(_, _, let payload): TaskID.byteCount + 4 + payload.readableBytes
        case .failed(_, _, let message): TaskID.byteCount + 1 + message.utf8.count
        case .infoRequest, .poolRequest: 0
        case .info(let json), .pool(let json): json.readableBytes
        case .error(let message), .goodbye(let message): message.utf8.count
        case .drain: 1
        case .traceContext(_, let traceParent, let traceState):
            TaskID.byteCount + 1 + traceParent.utf8.count + traceState.utf8.count
        }
    }
}

/// How a task timeout travels: whole milliseconds in 32 bits, 0 meaning "the server's default".
package enum TimeoutEncoding {
    package static func milliseconds(_ timeout: Duration?) -> UInt32 {
        guard let timeout else { return 0 }
        let (seconds, attoseconds) = timeout.components
        // Saturate rather than trap on durations beyond what 32-bit milliseconds can say (about 49.7 days).
        guard seconds >= 0 else { return 1 }
        let (wholeMilliseconds, overflow) = seconds.multipliedReportingOverflow(by: 1000)
        guard !overflow else { return .max }
        let milliseconds = wholeMilliseconds + attoseconds / 1_000_000_000_000_000
        return UInt32(clamping: max(1, milliseconds))
    }

    package static func duration(milliseconds: UInt32) -> Duration? {
        milliseconds == 0 ? nil : .milliseconds(milliseconds)
    }
}
