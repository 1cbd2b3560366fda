import AiotaskProtocol
import NIOCore
import Testing

@Suite("Trace context: the traceparent and its frame")
struct TraceParentTests {
    static let example = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    @Test("a valid traceparent reads into its ids and flags, and writes back the same text")
    func roundTrip() throws {
        let parent = try TraceParent(parsing: Self.example)
        #expect(parent.traceIDHigh == 0x4bf9_2f35_77b3_4da6)
        #expect(parent.traceIDLow == 0xa3ce_929d_0e0e_4736)
        #expect(parent.parentID == 0x00f0_67aa_0ba9_02b7)
        #expect(parent.flags == 1)
        #expect(parent.isSampled)
        #expect(parent.traceID == "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(parent.spanID == "00f067aa0ba902b7")
        #expect("\(parent)" == Self.example)
        let small = TraceParent(traceIDHigh: 0, traceIDLow: 1, parentID: 2, flags: 0)
        #expect("\(small)" == "00-00000000000000000000000000000001-0000000000000002-00")
        #expect(try TraceParent(parsing: "\(small)") == small)
    }

    @Test("a later version is read by its first four fields; what follows a '-' after them is ignored")
    func laterVersion() throws {
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-adds"
        #expect(try TraceParent(parsing: later) == TraceParent(parsing: Self.example))
    }

    struct Invalid: Sendable, CustomTestStringConvertible {
        var text: String
        var reason: String
        var testDescription: String { reason }
    }

    static let invalid: [Invalid] = [
        Invalid(text: "", reason: "is 0 characters long; a traceparent has 55"),
        Invalid(text: String(example.dropLast()), reason: "is 54 characters long; a traceparent has 55"),
        Invalid(text: example + "0", reason: "is 56 characters long; a version 00 traceparent has 55"),
        Invalid(
            text: "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            reason: "has version ff, which is invalid"
        ),
        Invalid(
            text: "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            reason: "has 'B' in its trace id (character 5); only 0-9 and a-f"
        ),
        Invalid(
            text: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
            reason: "has 'z' in its parent id (character 52); only 0-9 and a-f"
        ),
        Invalid(
            text: "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            reason: "has an all-zero trace id"
        ),
        Invalid(
            text: "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            reason: "has an all-zero parent id"
        ),
        Invalid(
            text: "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            reason: "has no '-' at character 3"
        ),
        Invalid(
            text: "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            reason: "has no '-' after its flags (character 56)"
        ),
    ]

    @Test("an invalid traceparent is refused with a reason that names what is wrong", arguments: invalid)
    func refused(_ testCase: Invalid) {
        #expect(throws: TraceParentError(testCase.reason)) { try TraceParent(parsing: testCase.text) }
        #expect("\(TraceParentError(testCase.reason))" == "the traceparent \(testCase.reason)")
    }

    @Test("TRACE_CONTEXT encodes as documented: id, the traceparent's length, the traceparent, the tracestate")
    func frameBytes() throws {
        var buffer = ByteBuffer()
        try buffer.writeFrame(.traceContext(knownID, traceParent: Self.example, traceState: "congo=t61rcWkgMzE"))
        #expect(Array(buffer.readableBytesView.prefix(5)) == [0x8C, 0x00, 0x00, 0x00, 0x59])
        #expect(Array(buffer.readableBytesView.dropFirst(5).prefix(16)) == knownIDBytes)
        #expect(buffer.getInteger(at: 21, as: UInt8.self) == 55)
        #expect(buffer.getString(at: 22, length: 55) == Self.example)
        #expect(buffer.getString(at: 77, length: 17) == "congo=t61rcWkgMzE")
        #expect(buffer.readableBytes == 5 + 0x59)
    }

    @Test("a traceparent longer than its length byte can say is not encoded")
    func tooLongToEncode() {
        var buffer = ByteBuffer()
        let id = TaskID(high: 1, low: 2)
        #expect(throws: ProtocolError.self) {
            try buffer.writeFrame(.traceContext(id, traceParent: String(repeating: "a", count: 256), traceState: ""))
        }
        #expect(buffer.readableBytes == 0)
    }

    @Test("a TRACE_CONTEXT whose traceparent length runs past the frame is a malformed frame")
    func lengthPastTheFrame() throws {
        var decoder = FrameDecoder(maximumPayloadLength: 1024)
        var buffer = ByteBuffer(bytes: [0x8C, 0, 0, 0, 18] + [UInt8](repeating: 1, count: 16) + [2, 0x30])
        #expect(
            throws: ProtocolError.malformedFrame(
                .traceContext,
                reason: "the traceparent's length is 2 bytes, but 1 follow"
            )
        ) {
            try decoder.decode(buffer: &buffer)
        }
    }
}
