/// A violation of the wire protocol by the peer. The connection cannot continue after one.
public enum ProtocolError: Error, Hashable, Sendable {
    /// The type byte names no known frame.
    case unknownFrameType(UInt8)
    /// The length field exceeds what the receiver accepts for this type.
    case frameTooLarge(FrameType, length: Int, limit: Int)
    /// The payload does not have the layout its type requires.
    case malformedFrame(FrameType, reason: String)
    /// The stream ended in the middle of a frame.
    case truncatedStream(bytesLeft: Int)
    /// A frame that needs a 16-bit length field was given a longer payload.
    case payloadExceedsLegacyFrame(FrameType, length: Int)
}

extension ProtocolError: CustomStringConvertible {
    public var description: String {
        switch self {
        case .unknownFrameType(let type):
            "unknown frame type \(type)"
        case .frameTooLarge(let type, let length, let limit):
            "\(type) frame of \(length) bytes exceeds the limit of \(limit) bytes"
        case .malformedFrame(let type, let reason):
            "malformed \(type) frame: \(reason)"
        case .truncatedStream(let bytesLeft):
            "stream ended inside a frame (\(bytesLeft) bytes left over)"
        case .payloadExceedsLegacyFrame(let type, let length):
            "\(type) payload of \(length) bytes does not fit a 16-bit length field"
        }
    }
}
