/// The type byte that starts every frame.
///
/// Types below 128 are those of the original protocol and carry a 16-bit length; types from 128 up are
/// extensions and carry a 32-bit length. A server sends extension frames only to clients that sent `HELLO`.
public struct FrameType: RawRepresentable, Hashable, Sendable {
    public let rawValue: UInt8

    public init(rawValue: UInt8) {
        self.rawValue = rawValue
    }

    /// Client → server: task id + task bytes (original protocol).
    public static let enqueue = FrameType(rawValue: 1)
    /// Server → client: task id + status byte (original protocol).
    public static let update = FrameType(rawValue: 2)
    /// Server → client: task id + result bytes (original protocol).
    public static let done = FrameType(rawValue: 3)
    /// Client → server: task id; answered with `UPDATE` (original protocol).
    public static let status = FrameType(rawValue: 4)

    /// Both ways: protocol version and the largest task or result the sender accepts.
    public static let hello = FrameType(rawValue: 0x80)
    /// Client → server: task id + timeout + task bytes.
    public static let submit = FrameType(rawValue: 0x81)
    /// Server → client: task id + result bytes.
    public static let result = FrameType(rawValue: 0x82)
    /// Server → client: task id + reason code + message.
    public static let failed = FrameType(rawValue: 0x83)
    /// Client → server: task id of a queued or running task to cancel.
    public static let cancel = FrameType(rawValue: 0x84)
    /// Client → server: ask for the server's live statistics.
    public static let infoRequest = FrameType(rawValue: 0x85)
    /// Server → client: the statistics, as a JSON object.
    public static let info = FrameType(rawValue: 0x86)
    /// Server → client: a connection-level error, sent just before the server closes the connection.
    public static let error = FrameType(rawValue: 0x87)
    /// Server → client: the server is stopping; tasks sent after it are refused, and the connection closes once
    /// every task taken before it is answered.
    public static let goodbye = FrameType(rawValue: 0x88)
    /// Client → server: an operator puts the server into drain for HAProxy's agent check (1), or takes it out (0);
    /// answered with `INFO`.
    public static let drain = FrameType(rawValue: 0x89)
    /// Client → server (protocol version 2): ask for the pool's state, process by process.
    public static let poolRequest = FrameType(rawValue: 0x8A)
    /// Server → client (protocol version 2): the pool's state, as a JSON object (``PoolStatus``).
    public static let pool = FrameType(rawValue: 0x8B)
    /// Client → server (protocol version 3): the W3C trace context of the task whose `SUBMIT` or `ENQUEUE` comes next
    /// (``TraceParent``).
    public static let traceContext = FrameType(rawValue: 0x8C)

    /// Whether this is an extension type, framed with a 32-bit length.
    public var isExtension: Bool { rawValue & 0x80 != 0 }

    /// Size of the header (type byte + length field) of frames of this type.
    public var headerLength: Int { isExtension ? 5 : 3 }

    /// Whether frames of this type carry task or result bytes, limited by the payload limit rather than the
    /// control-frame limit.
    public var carriesTaskData: Bool {
        self == .enqueue || self == .submit || self == .done || self == .result
    }

    /// Whether this type is defined by this version of the protocol.
    public var isKnown: Bool {
        (1...4).contains(rawValue) || (0x80...0x8C).contains(rawValue)
    }
}

extension FrameType: CustomStringConvertible {
    public var description: String {
        switch self {
        case .enqueue: "ENQUEUE"
        case .update: "UPDATE"
        case .done: "DONE"
        case .status: "STATUS"
        case .hello: "HELLO"
        case .submit: "SUBMIT"
        case .result: "RESULT"
        case .failed: "FAILED"
        case .cancel: "CANCEL"
        case .infoRequest: "INFO_REQUEST"
        case .info: "INFO"
        case .error: "ERROR"
        case .goodbye: "GOODBYE"
        case .drain: "DRAIN"
        case .poolRequest: "POOL_REQUEST"
        case .pool: "POOL"
        case .traceContext: "TRACE_CONTEXT"
        default: "type \(rawValue)"
        }
    }
}
