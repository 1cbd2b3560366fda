/// A violation of the wire protocol by the peer. The connection cannot continue after one.
///
/// Switch on its ``code``; the other properties say what was wrong, as far as the code has them.
public struct ProtocolError: Error, Hashable, Sendable {
    /// What kind of violation this is.
    public struct Code: Hashable, Sendable {
        private enum Base: Hashable, Sendable {
            case unknownFrameType, frameTooLarge, malformedFrame, truncatedStream, payloadExceedsLegacyFrame
        }

        private let base: Base

        private init(_ base: Base) {
            self.base = base
        }

        /// The type byte names no known frame (``ProtocolError/typeByte``).
        public static let unknownFrameType = Code(.unknownFrameType)
        /// The length field exceeds what the receiver accepts for this type (``ProtocolError/length``,
        /// ``ProtocolError/limit``).
        public static let frameTooLarge = Code(.frameTooLarge)
        /// The payload does not have the layout its type requires (``ProtocolError/reason``).
        public static let malformedFrame = Code(.malformedFrame)
        /// The stream ended in the middle of a frame (``ProtocolError/bytesLeft``).
        public static let truncatedStream = Code(.truncatedStream)
        /// A frame that needs a 16-bit length field was given a longer payload (``ProtocolError/length``).
        public static let payloadExceedsLegacyFrame = Code(.payloadExceedsLegacyFrame)
    }

    /// What kind of violation this is.
    public var code: Code
    /// The frame's type, when it is a known one.
    public var frameType: FrameType?
    /// For ``Code/unknownFrameType``: the type byte received.
    public var typeByte: UInt8?
    /// The length the frame's payload has or declares.
    public var length: Int?
    /// For ``Code/frameTooLarge``: the largest length accepted for the type.
    public var limit: Int?
    /// For ``Code/malformedFrame``: what is wrong with the payload.
    public var reason: String?
    /// For ``Code/truncatedStream``: the bytes of the unfinished frame.
    public var bytesLeft: Int?

    /// An error of the given kind; the static functions named after the codes fill in what each one has.
    public init(
        _ code: Code,
        frameType: FrameType? = nil,
        typeByte: UInt8? = nil,
        length: Int? = nil,
        limit: Int? = nil,
        reason: String? = nil,
        bytesLeft: Int? = nil
    ) {
        self.code = code
        self.frameType = frameType
        self.typeByte = typeByte
        self.length = length
        self.limit = limit
        self.reason = reason
        self.bytesLeft = bytesLeft
    }

    /// The type byte names no known frame.
    public static func unknownFrameType(_ type: UInt8) -> ProtocolError {
        ProtocolError(.unknownFrameType, typeByte: type)
    }

    /// The length field exceeds what the receiver accepts for this type.
    public static func frameTooLarge(_ type: FrameType, length: Int, limit: Int) -> ProtocolError {
        ProtocolError(.frameTooLarge, frameType: type, length: length, limit: limit)
    }

    /// The payload does not have the layout its type requires.
    public static func malformedFrame(_ type: FrameType, reason: String) -> ProtocolError {
        ProtocolError(.malformedFrame, frameType: type, reason: reason)
    }

    /// The stream ended in the middle of a frame.
    public static func truncatedStream(bytesLeft: Int) -> ProtocolError {
        ProtocolError(.truncatedStream, bytesLeft: bytesLeft)
    }

    /// A frame that needs a 16-bit length field was given a longer payload.
    public static func payloadExceedsLegacyFrame(_ type: FrameType, length: Int) -> ProtocolError {
        ProtocolError(.payloadExceedsLegacyFrame, frameType: type, length: length)
    }
}

extension ProtocolError.Code: CustomStringConvertible {
    public var description: String {
        switch base {
        case .unknownFrameType: "unknown frame type"
        case .frameTooLarge: "frame too large"
        case .malformedFrame: "malformed frame"
        case .truncatedStream: "truncated stream"
        case .payloadExceedsLegacyFrame: "payload exceeds a legacy frame"
        }
    }
}

extension ProtocolError: CustomStringConvertible {
    public var description: String {
        let type = frameType.map { "\($0)" } ?? "unknown"
        switch code {
        case .unknownFrameType:
            // 22 is the first byte of every TLS record: a client speaking TLS to a plain listener.
            let hint = typeByte == 22 ? " (a TLS handshake? this listener speaks plain frames, not TLS)" : ""
            return "unknown frame type \(typeByte.map { "\($0)" } ?? "?")\(hint)"
        case .frameTooLarge:
            return "\(type) frame of \(length ?? 0) bytes exceeds the limit of \(limit ?? 0) bytes"
        case .malformedFrame:
            return "malformed \(type) frame: \(reason ?? "")"
        case .truncatedStream:
            return "stream ended inside a frame (\(bytesLeft ?? 0) bytes left over)"
        default:
            return "\(type) payload of \(length ?? 0) bytes does not fit a 16-bit length field"
        }
    }
}
