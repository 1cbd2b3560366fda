/// A W3C Trace Context `traceparent`: the trace a task belongs to and the span that submitted it.
///
/// Its text form is `VERSION-TRACEID-PARENTID-FLAGS`, all lower-case hex: `00-` then 32 digits of trace id, `-`,
/// 16 digits of parent (span) id, `-`, 2 digits of flags — 55 characters
/// (`00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`). A client attaches one to a task with a
/// `TRACE_CONTEXT` frame (protocol version 3, docs/protocol.md); the daemon logs its ids as `TRACE_ID` and `SPAN_ID`
/// in the task's journal entries and hands it to the task's handler.
///
/// The value is held as integers, not text: a task's context costs no allocation where it travels.
public struct TraceParent: Hashable, Sendable {
    /// The version of the format that this type writes; a text of a later version is read by its first four fields.
    public static let currentVersion: UInt8 = 0
    /// The length of the text form of version 00.
    public static let textLength = 55

    /// The upper 64 bits of the 128-bit trace id.
    public var traceIDHigh: UInt64
    /// The lower 64 bits of the 128-bit trace id.
    public var traceIDLow: UInt64
    /// The id of the span that submitted the task (W3C: `parent-id`); the handler's work is its child.
    public var parentID: UInt64
    /// The trace flags; bit 0 is `sampled`.
    public var flags: UInt8

    /// A trace context; the ids must not be zero (W3C: an all-zero id is invalid).
    public init(traceIDHigh: UInt64, traceIDLow: UInt64, parentID: UInt64, flags: UInt8 = 1) {
        precondition(traceIDHigh | traceIDLow != 0 && parentID != 0, "a traceparent's ids must not be all zero")
        self.traceIDHigh = traceIDHigh
        self.traceIDLow = traceIDLow
        self.parentID = parentID
        self.flags = flags
    }

    /// Whether the caller recorded its span (flag bit 0, `sampled`).
    public var isSampled: Bool { flags & 1 != 0 }

    /// The trace id: 32 lower-case hex digits, as `TRACE_ID` in the daemon's journal.
    public var traceID: String { Self.hex(traceIDHigh) + Self.hex(traceIDLow) }

    /// The parent (span) id: 16 lower-case hex digits, as `SPAN_ID` in the daemon's journal.
    public var spanID: String { Self.hex(parentID) }

    /// Reads a `traceparent` header value as W3C Trace Context level 1 says.
    ///
    /// Version `00` is exactly 55 characters; a later version (but `ff`) is at least 55, and anything after the
    /// first 55 must start with `-` and is ignored. Hex digits are lower case.
    ///
    /// - Throws: ``TraceParentError`` naming what is wrong: the length, a delimiter, a non-hex digit, version `ff`,
    ///   an all-zero trace or parent id.
    public init(parsing text: some StringProtocol) throws(TraceParentError) {
        let utf8 = Array(text.utf8.prefix(256))
        guard utf8.count >= Self.textLength else {
            throw TraceParentError("is \(text.utf8.count) characters long; a traceparent has \(Self.textLength)")
        }
        let version = try Self.field(utf8, 0, 2, "version")
        guard version != 0xff else { throw TraceParentError("has version ff, which is invalid") }
        if version == 0, text.utf8.count != Self.textLength {
            throw TraceParentError(
                "is \(text.utf8.count) characters long; a version 00 traceparent has \(Self.textLength)"
            )
        }
        if text.utf8.count > Self.textLength, utf8[Self.textLength] != UInt8(ascii: "-") {
            throw TraceParentError("has no '-' after its flags (character 56)")
        }
        for offset in [2, 35, 52] where utf8[offset] != UInt8(ascii: "-") {
            throw TraceParentError("has no '-' at character \(offset + 1)")
        }
        let high = try Self.field(utf8, 3, 16, "trace id")
        let low = try Self.field(utf8, 19, 16, "trace id")
        let parent = try Self.field(utf8, 36, 16, "parent id")
        let flags = try Self.field(utf8, 53, 2, "flags")
        guard high | low != 0 else { throw TraceParentError("has an all-zero trace id") }
        guard parent != 0 else { throw TraceParentError("has an all-zero parent id") }
        self.init(traceIDHigh: high, traceIDLow: low, parentID: parent, flags: UInt8(flags))
    }

    /// The `count` lower-case hex digits at `offset`, as a number.
    private static func field(
        _ utf8: [UInt8],
        _ offset: Int,
        _ count: Int,
        _ name: String
    ) throws(TraceParentError) -> UInt64 {
        var value: UInt64 = 0
        for index in offset..<(offset + count) {
            let byte = utf8[index]
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            default:
                let shown = byte < 0x80 ? "'\(Character(Unicode.Scalar(byte)))'" : "byte \(byte)"
                throw TraceParentError("has \(shown) in its \(name) (character \(index + 1)); only 0-9 and a-f")
            }
            value = value << 4 | UInt64(digit)
        }
        return value
    }

    private static func hex(_ value: UInt64, digits: Int = 16) -> String {
        let text = String(value, radix: 16)
        return String(repeating: "0", count: digits - text.count) + text
    }
}

extension TraceParent: CustomStringConvertible {
    /// The text form, version `00`: `00-<trace id>-<parent id>-<flags>`.
    public var description: String {
        "00-\(traceID)-\(spanID)-\(Self.hex(UInt64(flags), digits: 2))"
    }
}

/// Why a text is not a valid `traceparent`.
public struct TraceParentError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What is wrong, as the end of a sentence that starts with "the traceparent": `has an all-zero trace id`.
    public var reason: String

    public init(_ reason: String) {
        self.reason = reason
    }

    public var description: String { "the traceparent \(reason)" }
}
